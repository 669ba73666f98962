"""Where training episodes come from: generated load shapes and randomized calibration.

Training never sees a named shape. Episodes draw procedurally generated load (steps, ramps,
flash crowds at random levels and times), so every built-in shape is held out: the seeds'
shapes (constant, step, ramp, low, medium, high, mixed) are the test set of the evaluation and
``bursty``/``diurnal`` the validation set that picks the best checkpoint.

Domain randomization perturbs the calibrated profile per episode (CPU cost per request, client
overhead, pod start-up time) and per environment (GPU speed, background GPU load — the two
figures the seeds contradict), so the policy does not overfit one calibration and survives
the move from the twin to a real box.

For the placement scorer, :func:`randomized_cluster` does the same to the cluster (which nodes,
in which order, how big, how fast), so it learns GPU speed and load, not one cluster's layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ecrl.config import bounds
from ecrl.load.shapes import LoadShape
from ecrl.twin.profile import Profile
from ecrl.twin.spec import ClusterSpec

VALIDATION_SHAPES: tuple[str, ...] = ("bursty", "diurnal")
"""Named shapes used to pick the best checkpoint (never trained on, never the test set)."""
TEST_SHAPES: tuple[str, ...] = ("constant", "step", "ramp", "low", "medium", "high", "mixed")
"""The seeds' shapes: the evaluation set of issue 3 (never trained on, never validated on)."""


def _range(lo: float, hi: float) -> dict:
    return bounds(lo, hi)


@dataclass(frozen=True)
class RandomizationConfig:
    """Multiplicative ranges (uniform) around the calibrated profile; (1, 1) turns one off."""

    enabled: bool = True
    gpu_speed_scale: tuple[float, float] = field(default=(0.8, 1.25), metadata=_range(0.1, 10))
    background_util_ratio: tuple[float, float] = field(default=(0.15, 0.5), metadata=_range(0, 0.9))
    cpu_s_scale: tuple[float, float] = field(default=(0.7, 1.4), metadata=_range(0.1, 10))
    client_overhead_scale: tuple[float, float] = field(default=(0.7, 1.3), metadata=_range(0.1, 10))
    startup_scale: tuple[float, float] = field(default=(0.7, 1.6), metadata=_range(0.1, 10))
    max_users: float = field(default=100.0, metadata=bounds(1.0, 10_000.0))
    """Upper end of generated load levels (the seeds' high load)."""

    def validate(self) -> None:
        for name in (
            "gpu_speed_scale",
            "background_util_ratio",
            "cpu_s_scale",
            "client_overhead_scale",
            "startup_scale",
        ):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: must be [low, high] with low <= high")


def _draw(rng: np.random.Generator, r: tuple[float, float], size: int | None = None) -> np.ndarray:
    return rng.uniform(r[0], r[1], size)


def randomized_profile(
    base: Profile, rng: np.random.Generator, cfg: RandomizationConfig
) -> Profile:
    """A perturbed copy of ``base`` for one episode (unchanged when randomization is off)."""
    if not cfg.enabled:
        return base
    s = base.server
    server = replace(
        s,
        cpu_s_per_request=s.cpu_s_per_request * float(_draw(rng, cfg.cpu_s_scale)),
        client_overhead_s=s.client_overhead_s * float(_draw(rng, cfg.client_overhead_scale)),
        startup_mean_s=s.startup_mean_s * float(_draw(rng, cfg.startup_scale)),
    )
    return replace(base, server=server)


def env_variation(
    base: Profile, rng: np.random.Generator, cfg: RandomizationConfig, n_envs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-env (GPU speed scale, background GPU utilization) for :meth:`Twin.vary`."""
    if not cfg.enabled:
        return np.ones(n_envs), np.full(n_envs, base.gpu.background_util_ratio)
    return _draw(rng, cfg.gpu_speed_scale, n_envs), _draw(rng, cfg.background_util_ratio, n_envs)


def generated_shape(rng: np.random.Generator, duration_s: float, max_users: float) -> LoadShape:
    """A random load curve: 2–6 segments of steps or ramps between log-uniform levels, and
    sometimes a flash crowd (×2–4 for 15–60 s)."""

    def level() -> float:  # half log-uniform (many light loads), half uniform (heavy ones)
        if rng.random() < 0.5:
            return float(np.exp(rng.uniform(0.0, np.log(max_users))))
        return float(rng.uniform(1.0, max_users))

    t, v = 0.0, level()
    points: list[tuple[float, float]] = [(0.0, v)]
    n_seg = int(rng.integers(2, 7))
    lo, hi = min(20.0, duration_s / 3), max(duration_s - 20.0, duration_s * 2 / 3)
    cuts = np.sort(rng.uniform(lo, hi, n_seg - 1))
    for raw_cut in cuts:
        cut = max(float(raw_cut), t)
        nxt = level()
        if rng.random() < 0.6:  # step
            points += [(float(cut), v), (float(cut), nxt)]
        else:  # ramp over up to 120 s
            end = min(float(cut) + float(rng.uniform(20.0, 120.0)), duration_s)
            points += [(float(cut), v), (end, nxt)]
        t, v = points[-1]
    points.append((max(duration_s, t), v))
    shape = LoadShape("generated", tuple(points))
    if rng.random() < 0.3:
        start = float(rng.uniform(0.0, max(duration_s - 60.0, 0.0)))
        length = float(rng.uniform(15.0, 60.0))
        factor = float(rng.uniform(2.0, 4.0))
        ts = np.arange(0.0, duration_s + 1.0)
        vs = shape.value_at(ts)
        burst = (ts >= start) & (ts < start + length)
        vs = np.where(burst, np.minimum(vs * factor, max_users), vs)
        shape = LoadShape("generated", tuple(zip(ts.tolist(), vs.tolist(), strict=True)))
    return shape


def randomized_cluster(
    base: ClusterSpec,
    rng: np.random.Generator,
    *,
    node_subsets: bool,
    shuffle_sizes: bool,
    size_jitter: tuple[float, float],
    speed_jitter: tuple[float, float],
) -> ClusterSpec:
    """A 2–3 node subset in random order, sizes maybe dealt out anew, sizes and speeds jittered.

    ``shuffle_sizes`` (half the draws) decouples a node's CPU/memory from its GPU, so a scorer
    cannot learn "most free CPU" as a stand-in for "fastest GPU".
    """
    nodes = list(base.nodes)
    if node_subsets and len(nodes) > 2:
        k = int(rng.integers(2, min(3, len(nodes)) + 1))
        nodes = [nodes[i] for i in rng.permutation(len(nodes))[:k]]
    sizes = [(n.cpu_cores, n.memory_bytes) for n in nodes]
    if shuffle_sizes and rng.random() < 0.5:
        sizes = [sizes[i] for i in rng.permutation(len(sizes))]
    out = []
    for n, (cpu, mem) in zip(nodes, sizes, strict=True):
        f_cpu, f_mem = rng.uniform(*size_jitter, 2)
        gpus = tuple(replace(g, speed=g.speed * float(rng.uniform(*speed_jitter))) for g in n.gpus)
        out.append(replace(n, cpu_cores=cpu * f_cpu, memory_bytes=int(mem * f_mem), gpus=gpus))
    return replace(base, nodes=tuple(out))
