"""Clairvoyant oracle: the cost floor a real controller can at best approach.

It knows the future load and plans with the twin's own steady-state model: at every tick it
takes the peak users over the next pod-ready time (plus one period) and applies the
cheapest configuration — fewest replicas, then the largest capacity (replicas × batching ×
instances × CPU per pod, the same levers the RL policy has) — whose predicted p95 at
that peak is within the SLO (with a safety margin). No real policy can know the future, so
its GPU-replica-seconds are the floor every mode's cost is divided by in the report.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import numpy as np

from ecrl.config import bounds
from ecrl.load.shapes import LoadShape
from ecrl.policies.base import Action, Observation
from ecrl.twin.analytic import steady_state
from ecrl.twin.profile import Profile
from ecrl.twin.spec import ClusterSpec


@dataclass(frozen=True)
class OracleConfig:
    """Search space and margin of the oracle."""

    period_s: float = field(default=5.0, metadata=bounds(1.0, 600.0))
    slo_margin: float = field(default=0.85, metadata=bounds(0.1, 1.0))
    """Plan for p95 ≤ margin × SLO so that second-to-second noise stays inside the SLO."""
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32)
    delays_s: tuple[float, ...] = (0.0, 0.002, 0.005, 0.01)
    instance_counts: tuple[int, ...] = (1, 2)
    cpu_request_cores: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    """CPU per pod (Triton's pre/post-processing is CPU-bound; the RL envelope allows 0.5–4)."""
    user_grid_step: float = field(default=1.0, metadata=bounds(0.1, 100.0))


class OraclePolicy:
    """Plans with perfect knowledge of ``shape`` (see module docstring)."""

    name = "oracle"

    def __init__(
        self,
        shape: LoadShape,
        cluster: ClusterSpec,
        profile: Profile,
        config: OracleConfig | None = None,
    ):
        self.config = config or OracleConfig()
        self.period_s = self.config.period_s
        self.shape = shape
        self.lookahead_s = (
            profile.server.startup_mean_s * (1.0 + 2.0 * profile.server.startup_cv) + self.period_s
        )
        max_users = float(np.max(shape.series())) if shape.kind == "users" else 0.0
        # Plans are cached per scenario; the grid covers the shape in steps of 50 users.
        top = 50.0 * np.ceil(max(max_users, 1.0) / 50.0)
        self._plan = capacity_table(cluster, profile, self.config, top)

    def reset(self) -> None:
        """Stateless apart from the plan, which depends only on the shape."""

    def decide(self, obs: Observation) -> Action:
        horizon = np.arange(obs.time_s, obs.time_s + self.lookahead_s + 1.0, 1.0)
        peak = float(np.max(self.shape.value_at(np.minimum(horizon, self.shape.duration_s))))
        for cap, cfg in self._plan:
            if cap >= peak:
                return self._action(cfg, f"peak {peak:.0f} users ahead, config serves {cap:.0f}")
        cap, cfg = max(self._plan, key=lambda x: (x[0], -x[1]["replicas"]))
        return self._action(
            cfg, f"peak {peak:.0f} users exceeds every config; best serves {cap:.0f}"
        )

    @staticmethod
    def _action(cfg: dict[str, float], reason: str) -> Action:
        return Action(
            desired_replicas=int(cfg["replicas"]),
            max_batch_size=int(cfg["max_batch"]),
            batch_delay_s=float(cfg["delay_s"]),
            instance_count=int(cfg["instances"]),
            cpu_request_cores=float(cfg["cpu"]),
            reason=reason,
        )


@functools.lru_cache(maxsize=32)
def capacity_table(
    cluster: ClusterSpec, profile: Profile, c: OracleConfig, max_users: float
) -> list[tuple[float, dict[str, float]]]:
    """For each config, the most users it serves within margin × SLO, cheapest first."""
    d = cluster.deployment
    grid = np.arange(0.0, max_users + c.user_grid_step, c.user_grid_step)
    target = cluster.slo_p95_s * c.slo_margin
    out: list[tuple[float, float, dict[str, float]]] = []
    node_cpu = min(n.cpu_cores for n in cluster.nodes) - cluster.system_reserved_cpu_cores
    for r, b, n, dl, cpu in itertools.product(
        range(max(d.min_replicas, 1), d.max_replicas + 1),
        c.batch_sizes,
        c.instance_counts,
        c.delays_s,
        c.cpu_request_cores,
    ):
        if r > cluster.total_gpu_slots or np.ceil(r / len(cluster.nodes)) * cpu > node_cpu:
            continue
        if (
            profile.vram_per_replica_bytes(n, b) * np.ceil(r / len(cluster.nodes))
            > profile.gpu.vram_bytes
        ):
            continue
        ss = steady_state(profile, cluster, grid, r, b, n, cpu, dl)
        ok = ss.p95_s <= target
        # the largest user count below which every grid point is within target
        bad = np.flatnonzero(~ok)
        cap = grid[bad[0] - 1] if len(bad) and bad[0] > 0 else (grid[-1] if not len(bad) else -1.0)
        cfg = {"replicas": r, "max_batch": b, "instances": n, "delay_s": dl, "cpu": cpu}
        out.append((r, -cap, cpu, cfg | {"capacity_users": cap}))
    # Cheapest first: fewest GPU replicas; among those the largest capacity, then least CPU.
    out.sort(key=lambda x: (x[0], x[1], x[2]))
    return [(-neg_cap, cfg) for _, neg_cap, _, cfg in out]
