"""Prometheus metrics of the collector itself, in their own registry (one per collector).

Names follow the house rules: ``ecrl_`` prefix, base units, ``_total`` counters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TICK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""A tick is a few dozen local PromQL queries: tens of milliseconds; seconds mean trouble."""
OUTCOMES = ("state", "stale")


class CollectorMetrics:
    """Every metric the collector exports, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.tick_seconds = Histogram(
            "ecrl_collector_tick_duration_seconds",
            "Time to run one tick (queries, model config, build, encode).",
            buckets=TICK_BUCKETS_S,
            registry=r,
        )
        self.ticks = Counter(
            "ecrl_collector_ticks_total",
            "Ticks by outcome: state (a new state) or stale (a required input was missing).",
            ["outcome"],
            registry=r,
        )
        self.query_errors = Counter(
            "ecrl_collector_query_errors_total",
            "Queries (and Triton model-config reads) that failed, by query name.",
            ["query"],
            registry=r,
        )
        self.input_missing = Gauge(
            "ecrl_collector_input_missing",
            "1 while an input is missing or stale at the last tick, by input.",
            ["input"],
            registry=r,
        )
        self.state_age = Gauge(
            "ecrl_collector_state_age_seconds",
            "Seconds since the newest sample of the latest state (NaN: no state yet).",
            registry=r,
        )
        self.state_tick = Gauge(
            "ecrl_collector_state_tick", "Tick number of the latest state.", registry=r
        )
        for outcome in OUTCOMES:
            self.ticks.labels(outcome)

    def age_from(self, age_s: Callable[[], float | None]) -> None:
        """Compute the state age at scrape time from ``age_s`` (None → NaN)."""

        def read() -> float:
            value = age_s()
            return math.nan if value is None else value

        self.state_age.set_function(read)

    def set_missing(self, known: Iterable[str], missing: Iterable[str]) -> None:
        """Publish 1 for every input in ``missing`` and 0 for the rest of ``known``."""
        gone = set(missing)
        for name in sorted(set(known) | gone):
            self.input_missing.labels(name).set(1 if name in gone else 0)
