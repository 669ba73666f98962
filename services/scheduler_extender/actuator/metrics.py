"""Prometheus metrics of the actuator, in their own registry (one per actuator instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TICK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""A tick is two HTTP/gRPC reads and a few API calls: tens of ms, seconds when one times out."""


class ActuatorMetrics:
    """``ecrl_actuator_*``: ticks by outcome, fallbacks by reason, ops, leadership, duration."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ticks = Counter(
            "ecrl_actuator_ticks_total",
            "Control ticks by outcome (policy, fallback, hold, not_leader).",
            ["outcome"],
            registry=r,
        )
        self.fallbacks = Counter(
            "ecrl_actuator_fallback_total",
            "Ticks decided by the HPA-equivalent fallback, by reason.",
            ["reason"],
            registry=r,
        )
        self.ops = Counter(
            "ecrl_actuator_ops_total",
            "Changes attempted on the cluster, by operation and outcome.",
            ["op", "outcome"],
            registry=r,
        )
        self.leader = Gauge(
            "ecrl_actuator_leader",
            "1 while this process holds the Lease and may act, else 0.",
            registry=r,
        )
        self.tick_seconds = Histogram(
            "ecrl_actuator_tick_duration_seconds",
            "Duration of one control tick.",
            buckets=TICK_BUCKETS_S,
            registry=r,
        )
