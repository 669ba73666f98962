"""The RL environment: the twin seen through the state schema, acted on through the envelope.

:class:`TwinVecEnv` steps ``n_envs`` environments on one vectorized :class:`Twin` (fast
training); :class:`TwinEnv` is the same thing as a standard ``gymnasium.Env`` with one
environment (passes ``gymnasium.utils.env_checker.check_env``). Both:

- observe with :func:`ecrl.twin.observe.observation` → :func:`ecrl.schema.encode` — the exact
  path the collector and policy server use in production;
- act with :func:`ecrl.actions.decode` and :func:`ecrl.envelope.clamp`, and publish the
  envelope's mask as ``info["action_mask"]`` (the policy must sample within it);
- pay the reward of :mod:`ecrl.rl.reward` over the tick's seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from ecrl.actions import NVEC, changes, decode
from ecrl.config import bounds
from ecrl.envelope import EnvelopeConfig, action_masks, clamp
from ecrl.load.shapes import LoadShape
from ecrl.policies.base import Action, Observation
from ecrl.rl.reward import RewardConfig, TickOutcome, reward, reward_terms
from ecrl.rl.scenarios import (
    RandomizationConfig,
    env_variation,
    generated_shape,
    randomized_profile,
)
from ecrl.schema import FEATURES, OPTIONAL, STATE_BOUND, STATE_DIM, encode
from ecrl.twin.observe import observation
from ecrl.twin.profile import Profile
from ecrl.twin.spec import ClusterSpec
from ecrl.twin.twin import Twin

MASK_DIM = int(sum(NVEC))
GPU_SHARE, CPU_SHARE, MEMORY_SHARE = 0.9, 0.05, 0.05
"""How resource efficiency weighs what the Deployment holds: the GPU slot is the scarce,
costly resource of an edge box (and the cost KPI); CPU and memory weigh enough to trim waste."""


@dataclass(frozen=True)
class EnvConfig:
    """How the twin is turned into an RL problem."""

    tick_s: float = field(default=5.0, metadata=bounds(1.0, 300.0))
    """Control period (DESIGN.md's default tick)."""
    episode_s: float = field(default=600.0, metadata=bounds(10.0, 86_400.0))
    """Length of a training episode (time-limit truncation, bootstrapped by PPO)."""
    metric_dropout_ratio: float = field(default=0.01, metadata=bounds(0.0, 0.5))
    """Chance per tick that each optional feature is reported missing (training robustness)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    envelope: EnvelopeConfig = field(default_factory=EnvelopeConfig)
    randomization: RandomizationConfig = field(default_factory=RandomizationConfig)


def action_targets(actions: Sequence[Action]) -> dict[str, np.ndarray]:
    """Per-env absolute targets for :meth:`Twin.set_targets` (None → NaN = unchanged).

    Shared with the placement trainer, which steps a vectorized twin without this env.
    """

    def col(get: Any) -> np.ndarray:
        return np.array([np.nan if (v := get(a)) is None else float(v) for a in actions])

    return {
        "replicas": col(lambda a: a.desired_replicas),
        "max_batch": col(lambda a: a.max_batch_size),
        "delay_s": col(lambda a: a.batch_delay_s),
        "instances": col(lambda a: a.instance_count),
        "cpu_cores": col(lambda a: a.cpu_request_cores),
        "memory_bytes": col(lambda a: a.memory_request_bytes),
    }


class TwinVecEnv:
    """``n_envs`` twin environments in lock-step (shared clock, per-env load and randomization).

    With ``shapes`` given, env ``i`` replays ``shapes[i % len(shapes)]`` (evaluation);
    otherwise every env draws a generated shape per episode (training).
    """

    def __init__(
        self,
        cluster: ClusterSpec,
        profile: Profile,
        n_envs: int,
        seed: int = 0,
        cfg: EnvConfig | None = None,
        shapes: Sequence[LoadShape] | None = None,
        autoreset: bool = True,
    ) -> None:
        self.cluster = cluster
        self.base_profile = profile
        self.n_envs = n_envs
        self.cfg = cfg or EnvConfig()
        self.shapes = list(shapes) if shapes else None
        if self.shapes and len({s.kind for s in self.shapes}) > 1:
            raise ValueError("shapes: users and rps shapes cannot be mixed in one vector env")
        self.autoreset = autoreset
        self.rng = np.random.default_rng(seed)
        self.episode_s = (
            max(s.duration_s for s in self.shapes) if self.shapes else self.cfg.episode_s
        )
        self.twin: Twin
        self.obs: list[Observation] = []
        self.episode_return = np.zeros(n_envs)

    # ---------------------------------------------------------------- reset
    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """New episode in every env: new load, new randomized calibration, a fresh twin."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        r = self.cfg.randomization
        profile = randomized_profile(self.base_profile, self.rng, r)
        self.twin = Twin(
            self.cluster, profile, self.n_envs, seed=int(self.rng.integers(2**31)), dt_s=1.0
        )
        self.twin.vary(*env_variation(self.base_profile, self.rng, r, self.n_envs))
        shapes = (
            [self.shapes[i % len(self.shapes)] for i in range(self.n_envs)]
            if self.shapes
            else [
                generated_shape(self.rng, self.episode_s, r.max_users) for _ in range(self.n_envs)
            ]
        )
        self.open_loop = shapes[0].kind == "rps"
        t = np.arange(int(np.ceil(self.episode_s)) + 1, dtype=float)
        self.load = np.stack([s.value_at(t) for s in shapes])
        self.episode_return = np.zeros(self.n_envs)
        return self._observe()

    # ----------------------------------------------------------------- step
    def step(
        self, choices: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Apply one choice per env, run one tick; returns (states, rewards, terminated,
        truncated, info). On truncation with ``autoreset`` the returned states are the next
        episode's first and ``info["final_state"]`` holds the last ones (for bootstrapping)."""
        choices = np.asarray(choices, dtype=np.int64).reshape(self.n_envs, len(NVEC))
        env_cfg = self.cfg
        acts, cuts = [], 0
        for o, c in zip(self.obs, choices, strict=True):
            act, why = clamp(o, decode(o, c), env_cfg.envelope)
            acts.append(act)
            cuts += bool(why)
        self.twin.set_targets(**action_targets(acts))
        outcome = self._run_tick(np.array([changes(c) for c in choices]))
        terms = reward_terms(outcome, self.cluster.slo_p95_s)
        rew = reward(terms, env_cfg.reward)
        self.episode_return += rew
        truncated = np.full(self.n_envs, self.twin.t + 1e-9 >= self.episode_s)
        states, info = self._observe()
        info["reward_terms"] = terms
        info["clamped"] = cuts
        if truncated.any():
            info["episode_return"] = self.episode_return.copy()
            if self.autoreset:
                info["final_state"] = states
                states, reset_info = self.reset()
                info["action_mask"] = reset_info["action_mask"]
        return states, rew, np.zeros(self.n_envs, dtype=bool), truncated, info

    def _run_tick(self, churn: np.ndarray) -> TickOutcome:
        tw = self.twin
        n = round(self.cfg.tick_s / tw.dt_s)
        p95 = np.empty((self.n_envs, n))
        failed = np.empty((self.n_envs, n))
        busy = np.zeros(self.n_envs)
        held = np.zeros(self.n_envs)
        d, env_cfg = self.cluster.deployment, self.cfg.envelope
        for k in range(n):
            v = self.load[:, min(int(tw.t), self.load.shape[1] - 1)]
            r = tw.step(0.0, rps=v) if self.open_loop else tw.step(v)
            p95[:, k] = r.latency_p95_s
            failed[:, k] = r.failed
            hold = tw.holding()
            per_gpu = tw.pods_per_gpu(hold)
            hosting = per_gpu > 0
            busy += np.where(hosting, tw.gpu_busy, 0.0).sum(axis=1) / np.maximum(
                hosting.sum(axis=1), 1
            )
            pods = hold.sum(axis=1)
            held += (
                GPU_SHARE * pods / d.max_replicas
                + CPU_SHARE * pods * tw.cpu_req / (d.max_replicas * env_cfg.cpu_max_cores)
                + MEMORY_SHARE * pods * tw.mem_req / (d.max_replicas * env_cfg.memory_max_bytes)
            )
        return TickOutcome(p95, failed, busy / n, held / n, churn)

    # -------------------------------------------------------------- observe
    def _observe(self) -> tuple[np.ndarray, dict[str, Any]]:
        self.obs = [observation(self.twin, e) for e in range(self.n_envs)]
        states = np.stack([encode(o) for o in self.obs])
        p = self.cfg.metric_dropout_ratio
        if p > 0:
            drop = self.rng.random((self.n_envs, len(OPTIONAL))) < p
            idx = [FEATURES.index(f) for f in OPTIONAL]
            states[:, idx] = np.where(drop, 0.0, states[:, idx])
            flags = states[:, len(FEATURES) :]
            states[:, len(FEATURES) :] = np.where(drop, 1.0, flags)
        masks = np.stack([action_masks(o, self.cfg.envelope) for o in self.obs])
        return states, {"action_mask": masks}


class TwinEnv(gym.Env):
    """One twin environment behind the standard gymnasium API (for check_env and users' tools).

    ``info["action_mask"]`` carries the safety envelope's mask (flat over the heads of the
    ``MultiDiscrete`` action space); stepping outside it is clamped, never applied.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's API)

    def __init__(
        self,
        cluster: ClusterSpec,
        profile: Profile,
        cfg: EnvConfig | None = None,
        shape: LoadShape | None = None,
    ) -> None:
        self.vec = TwinVecEnv(
            cluster, profile, 1, cfg=cfg, shapes=[shape] if shape else None, autoreset=False
        )
        self.observation_space = gym.spaces.Box(-STATE_BOUND, STATE_BOUND, (STATE_DIM,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete(np.array(NVEC))

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        states, info = self.vec.reset(seed=seed)
        return states[0], {"action_mask": info["action_mask"][0]}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        states, rew, term, trunc, info = self.vec.step(np.asarray(action)[None, :])
        out = {"action_mask": info["action_mask"][0]}
        out.update({k: float(v[0]) for k, v in info["reward_terms"].items()})
        return states[0], float(rew[0]), bool(term[0]), bool(trunc[0]), out
