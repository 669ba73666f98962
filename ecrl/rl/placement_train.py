"""Train the shared-weight placement scorer in the multi-node twin and export it to ONNX.

Method: an evolution strategy, not PPO, because the decision is sparse — a pod is bound a few
times per episode and its effect (a GPU shared with a neighbour, a slow card) shows up minutes
later in the p95. OpenAI-ES (Salimans et al. 2017) needs no credit assignment: antithetic
perturbations of the scorer's weights are scored on whole episodes and Adam follows the
estimated gradient. It starts from the incumbent (weights that rank nodes exactly as the default
scheduler) and keeps the best centre on a fixed validation set, so it can only match or beat it
there.

Every generation draws a cluster variant (2–3 of the nodes in random order, jittered GPU speeds,
half the time the nodes' CPU/memory sizes shuffled) and a few generated load shapes
(``ecrl.rl.scenarios``; the named shapes stay held out for ``ecrl.experiment.placement``). All
candidates run all scenarios side by side in one vectorized twin with common random numbers
(:class:`CommonDraws`, training only): a candidate that binds like another ties with it exactly,
so the gradient sees decisions, not Poisson noise.
Replicas come from a fixed autoscaler (the ``hpa-queue`` baseline by default); only placement
differs. Objective per episode (lower is better): SLO-violation share
+ ``latency_weight``·mean(p95/SLO, capped) + ``cost_weight``·mean(replicas)/max_replicas.
On 2 cores: ~2.3 s per generation (17 candidates × 3 five-minute episodes), ~70 in 3 minutes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats as sps
from tqdm import tqdm

from ecrl.config import bounds
from ecrl.experiment.placement import SPREAD
from ecrl.experiment.runner import default_policy_factory, resolve_profile
from ecrl.load.shapes import LoadShape
from ecrl.placement import (
    INPUT_NAME,
    LOCAL_FEATURES,
    NODE_FEATURE_DIM,
    OUTPUT_NAME,
    KubeDefaultScorer,
    MlpNodeScorer,
    NodeScorer,
    OnnxNodeScorer,
    onnx_metadata,
    twin_placement,
)
from ecrl.rl.env import action_targets
from ecrl.rl.scenarios import generated_shape, randomized_cluster
from ecrl.twin.observe import observation
from ecrl.twin.profile import Profile
from ecrl.twin.spec import ClusterSpec, builtin_cluster_path, load_cluster
from ecrl.twin.twin import PlacementScorer, Twin

MULTI_NODE_CLUSTER = builtin_cluster_path("multi-node")
"""The default training cluster (``ecrl/configs/multi-node.yaml``)."""
EXPORT_S = 15.0
"""Seconds kept for the ONNX export (cold torch import: ~8 s on 2 cores); ≤ 10 % of the budget."""


def multi_node_cluster() -> ClusterSpec:
    return load_cluster(MULTI_NODE_CLUSTER)


@dataclass(frozen=True)
class PlacementTrainConfig:
    """Evolution-strategy training of the placement scorer (defaults: ≤ 3 min on 2 cores)."""

    seed: int = field(default=0, metadata=bounds(0, 2**31 - 1))
    cluster: ClusterSpec = field(default_factory=multi_node_cluster)
    profile: str = "rtx3080-mobilenetv4"
    autoscaler: str = "hpa-queue"
    """Fixed replica policy (``default_policy_factory`` names, tuned settings applied)."""
    hidden: int = field(default=0, metadata=bounds(0, 256))
    """Hidden tanh units of the shared per-node MLP. 0 = linear: as good on validation in the
    3-min budget, steadier on held-out shapes, readable weights (the mean-over-nodes context
    only matters with hidden units)."""
    population: int = field(default=16, metadata=bounds(2, 1024))
    """Perturbed candidates per generation (antithetic pairs: must be even)."""
    scenarios: int = field(default=3, metadata=bounds(1, 64))
    episode_s: float = field(default=300.0, metadata=bounds(60.0, 86_400.0))
    max_users: float = field(default=200.0, metadata=bounds(1.0, 10_000.0))
    """Top of generated load levels: the seeds' 100 users × the cluster's 2× replica room."""
    sigma: float = field(default=0.1, metadata=bounds(1e-4, 10.0))
    learning_rate: float = field(default=0.05, metadata=bounds(1e-5, 10.0))
    init: Literal["default-scheduler", "random"] = "default-scheduler"
    """Start from a scorer that ranks nodes exactly as the default scheduler (the incumbent)."""
    node_subsets: bool = True
    """Draw 2–3 of the cluster's nodes per generation (any node count, in random order)."""
    speed_jitter: tuple[float, float] = field(default=(0.7, 1.4), metadata=bounds(0.1, 10.0))
    """Per-node multiplicative GPU-speed jitter per generation ((1, 1) turns it off)."""
    shuffle_sizes: bool = True
    """Half the generations deal the nodes' (CPU, memory) sizes out in random order: in the YAML
    the CPU-richest node also has the fastest GPU, which need not hold on another cluster, so
    the scorer must not learn "most free CPU" as a stand-in for "fastest GPU"."""
    size_jitter: tuple[float, float] = field(default=(0.75, 1.5), metadata=bounds(0.1, 10.0))
    """Per-node CPU and memory multipliers."""
    background_util_ratio: tuple[float, float] = field(default=(0.15, 0.5), metadata=bounds(0, 0.9))
    latency_weight: float = field(default=0.2, metadata=bounds(0.0, 100.0))
    latency_cap: float = field(default=4.0, metadata=bounds(1.0, 100.0))
    cost_weight: float = field(default=0.05, metadata=bounds(0.0, 100.0))
    validation_shapes: int = field(default=4, metadata=bounds(1, 64))
    eval_every: int = field(default=5, metadata=bounds(1, 10_000))
    max_generations: int = field(default=400, metadata=bounds(1, 1_000_000))
    max_minutes: float = field(default=3.0, metadata=bounds(0.01, 10_000.0))

    def validate(self) -> None:
        if self.population % 2:
            raise ValueError("population: must be even (antithetic pairs)")
        for name in ("speed_jitter", "size_jitter", "background_util_ratio"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: must be [low, high] with low <= high")

    def config_hash(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fast_config(**overrides: Any) -> PlacementTrainConfig:
    """A ≤ 20 s run for tests and smoke checks."""
    base = {"population": 8, "scenarios": 2, "episode_s": 90.0, "max_users": 100.0}
    base |= {"validation_shapes": 2, "eval_every": 3, "max_generations": 12, "max_minutes": 0.3}
    return PlacementTrainConfig(**(base | overrides))


# ------------------------------------------------------------------------------- rollouts
def rollout(
    cluster: ClusterSpec,
    profile: Profile,
    placement: PlacementScorer | None,
    shapes: Sequence[LoadShape],
    cfg: PlacementTrainConfig,
    seed: int,
    background: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Objective (lower is better) of each env: env ``e`` runs ``shapes[e]`` to the shortest end.

    ``groups`` (env → group id) switches to :class:`CommonDraws`: envs of a group share arrivals.
    """
    n = len(shapes)
    tw = Twin(cluster, profile, n_envs=n, seed=seed, placement=placement)
    if background is not None:
        tw.vary(np.ones(n), background)
    if groups is not None:
        tw.rng = CommonDraws(seed, groups)  # type: ignore[assignment]
    tw.reset()  # the initial pods are placed under this background and generator too
    policies = [default_policy_factory(cfg.autoscaler, s, cluster, profile) for s in shapes]
    for p in policies:
        p.reset()
    series = [s.series(tw.dt_s) for s in shapes]
    users = np.stack([s[: min(map(len, series))] for s in series], axis=1)
    viol = lat = cost = 0.0
    next_decision = 0.0
    for u in users:
        if tw.t + 1e-9 >= next_decision:
            acts = [p.decide(observation(tw, e)) for e, p in enumerate(policies)]
            tw.set_targets(**action_targets(acts))
            next_decision += policies[0].period_s
        r = tw.step(u)
        p95 = np.nan_to_num(r.latency_p95_s, nan=0.0)
        viol = viol + ((p95 > cluster.slo_p95_s) | (r.failed > 0))
        lat = lat + np.minimum(p95 / cluster.slo_p95_s, cfg.latency_cap)
        cost = cost + tw.holding().sum(axis=1) / cluster.deployment.max_replicas
    t = len(users)
    return (viol + cfg.latency_weight * lat + cfg.cost_weight * cost) / t


class CommonDraws:
    """Stands in for the twin's Generator so that envs of one group share random numbers.

    Arrivals are drawn by inversion from uniforms common to the group (common random numbers):
    candidates that bind alike see identical arrivals and tie exactly, and those that differ see
    positively correlated ones — so the ES compares decisions, not Poisson noise. Start-up times
    are their mean (which pod starts when depends on the candidate: no common draw exists).
    """

    def __init__(self, seed: int, groups: np.ndarray) -> None:
        self._gen = np.random.default_rng(seed)
        self._groups = np.asarray(groups)
        self._n = int(self._groups.max()) + 1

    def poisson(self, lam: np.ndarray) -> np.ndarray:
        lam = np.asarray(lam, dtype=float)
        u = self._gen.random((self._n, *lam.shape[1:]))[self._groups]
        draws = sps.poisson.ppf(np.clip(u, 1e-12, 1 - 1e-12), np.maximum(lam, 1e-12))
        return np.where(lam > 0, draws, 0.0)

    def lognormal(self, mean: float, sigma: float, size: int) -> np.ndarray:
        return np.full(size, np.exp(mean + sigma**2 / 2))


Scenario = tuple[ClusterSpec, LoadShape]


def _cluster_variant(cfg: PlacementTrainConfig, rng: np.random.Generator) -> ClusterSpec:
    """One generation's cluster: ``cfg.cluster`` randomized as the config says."""
    return randomized_cluster(
        cfg.cluster,
        rng,
        node_subsets=cfg.node_subsets,
        shuffle_sizes=cfg.shuffle_sizes,
        size_jitter=cfg.size_jitter,
        speed_jitter=cfg.speed_jitter,
    )


def validation_scenarios(cfg: PlacementTrainConfig) -> list[Scenario]:
    """Fixed yardstick: the cluster as configured, then randomized variants; generated loads."""
    rng = np.random.default_rng([cfg.seed, 2**31 - 1])  # disjoint from the training stream
    return [
        (cfg.cluster if i == 0 else _cluster_variant(cfg, rng), shape)
        for i in range(cfg.validation_shapes)
        for shape in [generated_shape(rng, cfg.episode_s, cfg.max_users)]
    ]


def validate(
    cfg: PlacementTrainConfig, profile: Profile, scorer: NodeScorer | None, val: list[Scenario]
) -> float:
    """Mean objective over the validation scenarios (None = the twin's spread)."""
    hook = None if scorer is None else twin_placement(scorer)
    return float(
        np.mean([rollout(c, profile, hook, [s], cfg, seed=cfg.seed + 7)[0] for c, s in val])
    )


ZSCORE_FLOOR = 0.01
"""Smallest objective spread in a scenario treated as signal (a scenario where every candidate
binds alike but one, by a hair, must not weigh as much as one where placement matters)."""


def _utilities(obj: np.ndarray) -> np.ndarray:
    """Per-scenario z-scores of the objective ([scenarios, candidates]), mean over scenarios."""
    std = np.maximum(obj.std(axis=1, keepdims=True), ZSCORE_FLOOR)
    return ((obj - obj.mean(axis=1, keepdims=True)) / std).mean(axis=0)


def initial_params(cfg: PlacementTrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Flat scorer weights: random, or ranking exactly as LeastAllocated + BalancedAllocation.

    The warm start reads the two upstream scores (features 10, 11) through one tanh unit in
    its linear range (monotone, so the same argmax); the other hidden units start with zero
    output weight, so they change nothing until the search finds a use for them.
    """
    dims = MlpNodeScorer.dims(cfg.hidden)
    layers = [[rng.normal(0, 0.1 / np.sqrt(i), (i, o)), np.zeros(o)] for i, o in dims]
    if cfg.init == "default-scheduler":
        la, ba = (
            LOCAL_FEATURES.index("least_allocated_ratio"),
            LOCAL_FEATURES.index("balanced_allocation_ratio"),
        )
        layers[-1][0][:] = 0.0
        layers[0][0][:, 0] = 0.0
        layers[0][0][[la, ba], 0] = 0.5 if cfg.hidden else 1.0
        if cfg.hidden:
            layers[-1][0][0, 0] = 1.0
    return np.concatenate([np.concatenate([w.ravel(), b]) for w, b in layers])


def train_placement(
    cfg: PlacementTrainConfig, out_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """Train with OpenAI-ES, keep the best validated centre, export ONNX; returns the report."""
    t0 = time.monotonic()
    cfg.validate()  # built in code (not from YAML), the cross-field rules still hold
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = resolve_profile(cfg.profile)
    rng = np.random.default_rng(cfg.seed)
    theta = initial_params(cfg, rng)
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    val = validation_scenarios(cfg)
    baselines = {
        "default-scheduler": validate(cfg, profile, KubeDefaultScorer(), val),
        SPREAD: validate(cfg, profile, None, val),
    }
    best = (validate(cfg, profile, MlpNodeScorer.from_flat(theta, cfg.hidden), val), theta)
    history: list[dict[str, float]] = [{"generation": 0, "validation": best[0]}]
    half = cfg.population // 2
    bar = tqdm(total=cfg.max_generations, desc="placement-es", disable=not progress)
    gen = 0
    budget_s = 60 * cfg.max_minutes
    reserve_s = min(EXPORT_S, 0.1 * budget_s)
    gen_s = reserve_s  # stop one (slowest) generation and an export before the budget
    while gen < cfg.max_generations and time.monotonic() - t0 + gen_s < budget_s:
        gen += 1
        t_gen = time.monotonic()
        eps = rng.standard_normal((half, len(theta)))
        cands = np.concatenate([theta + cfg.sigma * eps, theta - cfg.sigma * eps, theta[None]])
        scorers = [MlpNodeScorer.from_flat(c, cfg.hidden) for c in cands]
        cluster = _cluster_variant(cfg, rng)
        shapes = [generated_shape(rng, cfg.episode_s, cfg.max_users) for _ in range(cfg.scenarios)]
        bg = rng.uniform(*cfg.background_util_ratio, cfg.scenarios)
        k = len(cands)
        obj = rollout(
            cluster,
            profile,
            twin_placement([scorers[e % k] for e in range(k * cfg.scenarios)]),
            [s for s in shapes for _ in range(k)],
            cfg,
            seed=int(rng.integers(2**31)),
            background=np.repeat(bg, k),
            groups=np.repeat(np.arange(cfg.scenarios), k),
        ).reshape(cfg.scenarios, k)
        util = _utilities(obj[:, :-1])
        grad = ((util[:half] - util[half:]) @ eps) / (cfg.population * cfg.sigma)
        m = 0.9 * m + 0.1 * grad  # Adam (β1 = 0.9, β2 = 0.999)
        v = 0.999 * v + 0.001 * grad**2
        theta = theta - cfg.learning_rate * (m / (1 - 0.9**gen)) / (
            np.sqrt(v / (1 - 0.999**gen)) + 1e-8
        )
        row = {"generation": gen, "centre": float(obj[:, -1].mean()), "pop": float(obj.mean())}
        if gen % cfg.eval_every == 0:
            row["validation"] = validate(
                cfg, profile, MlpNodeScorer.from_flat(theta, cfg.hidden), val
            )
            if row["validation"] < best[0]:
                best = (row["validation"], theta.copy())
        history.append(row)
        gen_s = max(gen_s, reserve_s + time.monotonic() - t_gen)
        bar.set_postfix(centre=f"{row['centre']:.3f}", best_val=f"{best[0]:.3f}")
        bar.update()
    bar.close()
    scorer = MlpNodeScorer.from_flat(best[1], cfg.hidden)
    scorer.save_npz(out_dir / "placement.npz")
    export = export_placement_onnx(scorer, out_dir / "placement.onnx", cfg)
    report = {
        "seed": cfg.seed,
        "config_hash": cfg.config_hash(),
        "generations": gen,
        "wall_time_s": time.monotonic() - t0,
        "best_validation": best[0],
        "validation_baselines": baselines,
        "initial_validation": history[0]["validation"],
        "export": export,
        "history": history,
        "config": asdict(cfg),
    }
    (out_dir / "result.json").write_text(json.dumps(report, indent=2, default=str))
    return report


# --------------------------------------------------------------------------------- export
def export_placement_onnx(
    scorer: MlpNodeScorer, path: Path, cfg: PlacementTrainConfig | None = None
) -> dict[str, Any]:
    """Torch copy of ``scorer`` → ONNX (dynamic node axis), checked, with parity figures."""
    import torch
    from torch import nn

    from ecrl.onnx_export import export_graph, stamp_metadata

    layers: list[nn.Module] = []
    for k, (w, b) in enumerate(scorer.layers):
        lin = nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b.copy()))
        layers += [lin] if k == len(scorer.layers) - 1 else [lin, nn.Tanh()]
    net = nn.Sequential(*layers, nn.Flatten(0))
    net.eval()
    nodes_axis = {INPUT_NAME: {0: "nodes"}, OUTPUT_NAME: {0: "nodes"}}
    example = (torch.zeros(3, NODE_FEATURE_DIM),)
    export_graph(net, example, path, [INPUT_NAME], [OUTPUT_NAME], nodes_axis)
    extra = {} if cfg is None else {"train_config_hash": cfg.config_hash(), "seed": str(cfg.seed)}
    stamp_metadata(path, onnx_metadata({"hidden": str(len(scorer.layers) - 1), **extra}))
    ort_scorer = OnnxNodeScorer(path)
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in (1, 2, 3, 5, 17):
        x = rng.normal(0, 1, (n, NODE_FEATURE_DIM)).astype(np.float32)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        worst = max(worst, float(np.abs(ort_scorer.score_features(x) - ref).max()))
        worst = max(worst, float(np.abs(scorer.score_features(x) - ref).max()))
    return {"path": str(path), "max_abs_diff_vs_torch": worst, "parity_ok": worst <= 1e-5}
