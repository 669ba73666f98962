"""Train the scaling policy on the twin and export it: what ``make train`` / ``ecrl train`` run.

One YAML (or the defaults) holds everything: PPO hyper-parameters, the environment (tick,
episode, reward weights, envelope, domain randomization), the cluster scenario and profile.
The run directory gets TensorBoard logs, ``config.json``, ``best.pt``/``last.pt``,
``result.json`` and the exported ``policy.onnx`` (with the config hash in its metadata).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecrl.actions import NVEC
from ecrl.config import from_file
from ecrl.load.shapes import get_shape
from ecrl.rl.agent import Agent
from ecrl.rl.env import EnvConfig, TwinVecEnv
from ecrl.rl.ppo import Args, TrainResult, train
from ecrl.rl.scenarios import VALIDATION_SHAPES, RandomizationConfig, generated_shape
from ecrl.schema import STATE_DIM
from ecrl.twin.spec import ClusterSpec

DEFAULT_PROFILE = "rtx3080-mobilenetv4"


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run: algorithm, environment, cluster and where validation comes from."""

    ppo: Args = field(default_factory=Args)
    env: EnvConfig = field(default_factory=EnvConfig)
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    profile: str = DEFAULT_PROFILE
    validation_shapes: tuple[str, ...] = VALIDATION_SHAPES
    validation_generated: int = 2
    """Extra generated shapes (fixed seeds, never trained on) in the validation set."""

    def config_hash(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_train_config(path: str | None) -> TrainConfig:
    return TrainConfig() if path is None else from_file(TrainConfig, path)


def validation_env(cfg: TrainConfig, profile: Any) -> TwinVecEnv:
    """Held-out shapes, calibrated profile, no randomization or dropout: a fixed yardstick."""
    rng = np.random.default_rng(2**31 - 1)  # disjoint from every training seed stream
    shapes = [get_shape(s) for s in cfg.validation_shapes] + [
        generated_shape(rng, cfg.env.episode_s, cfg.env.randomization.max_users)
        for _ in range(cfg.validation_generated)
    ]
    env_cfg = replace(
        cfg.env, metric_dropout_ratio=0.0, randomization=RandomizationConfig(enabled=False)
    )
    return TwinVecEnv(
        cfg.cluster, profile, len(shapes), seed=0, cfg=env_cfg, shapes=shapes, autoreset=False
    )


def evaluate_greedy(agent: Agent, env: TwinVecEnv, seed: int = 0) -> float:
    """Mean return of one greedy episode per env (the validation score; higher is better).

    ``env`` must not auto-reset (:func:`validation_env` builds it so)."""
    states, info = env.reset(seed=seed)
    total = np.zeros(env.n_envs)
    while True:
        choices = agent.act(states, info["action_mask"])
        states, rew, term, trunc, info = env.step(choices)
        total += rew
        if (term | trunc).all():
            return float(total.mean())


def run_training(
    cfg: TrainConfig, out_dir: Path, progress: bool = True
) -> tuple[Agent, TrainResult, dict[str, Any]]:
    """Train, then export ``policy.onnx`` from the best checkpoint; returns the export report."""
    from ecrl.experiment.runner import resolve_profile
    from ecrl.rl.export import export_onnx

    profile = resolve_profile(cfg.profile)
    env = TwinVecEnv(cfg.cluster, profile, cfg.ppo.num_envs, seed=cfg.ppo.seed, cfg=cfg.env)
    val = validation_env(cfg, profile)
    agent, result = train(
        cfg.ppo,
        env,
        lambda a: evaluate_greedy(a, val),
        out_dir,
        STATE_DIM,
        NVEC,
        progress=progress,
        extra_config={"train_config": asdict(cfg), "train_config_hash": cfg.config_hash()},
    )
    sample, _ = env.reset(seed=cfg.ppo.seed + 1)
    with torch.no_grad():
        report = export_onnx(
            agent,
            out_dir / "policy.onnx",
            asdict(cfg),
            sample_states=sample,
        )
    return agent, result, asdict(report)
