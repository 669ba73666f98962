"""Prometheus metrics of the policy server, in their own registry (one per server instance).

A private :class:`CollectorRegistry` keeps several servers in one process (tests) apart and
keeps the exposition to what this service owns. Names follow the house rules: ``ecrl_`` prefix,
base units, ``_total`` counters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .batching import MAX_BATCH

DECISION_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
"""A small ONNX MLP decides in tens of microseconds to a millisecond: fine buckets below 10 ms."""

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, MAX_BATCH)
"""Batch sizes up to the batcher's bound."""

COMPONENTS = ("policy", "scorer")
FALLBACK_REASONS = ("no_model", "schema_mismatch", "model_error")


class ServerMetrics:
    """Every metric the policy server exports, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decision_seconds = Histogram(
            "ecrl_policy_decision_seconds",
            "Time to handle one request in the server, by RPC and outcome.",
            ["rpc", "outcome"],
            buckets=DECISION_BUCKETS_S,
            registry=r,
        )
        self.decide_batch_size = Histogram(
            "ecrl_policy_decide_batch_size",
            "Decide requests answered by one run of the policy graph (requests that arrive "
            "together are batched).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "ecrl_policy_requests_total",
            "Requests answered, by RPC and gRPC status code.",
            ["rpc", "code"],
            registry=r,
        )
        self.fallback = Gauge(
            "ecrl_policy_fallback",
            "1 while a component answers from its fallback (heuristic, kube-default), by reason.",
            ["component", "reason"],
            registry=r,
        )
        self.fallback_decisions = Counter(
            "ecrl_policy_fallback_decisions_total",
            "Answers that came from the fallback instead of the learned model.",
            ["rpc", "reason"],
            registry=r,
        )
        self.reloads = Counter(
            "ecrl_policy_reloads_total",
            "Model (re)load attempts, by component and outcome.",
            ["component", "outcome"],
            registry=r,
        )
        self.model_info = Gauge(
            "ecrl_policy_model_info",
            "1 for the model version each component serves (empty version: none loaded).",
            ["component", "version", "schema_hash"],
            registry=r,
        )
        for component in COMPONENTS:
            for reason in FALLBACK_REASONS:
                self.fallback.labels(component, reason).set(0)
        self._per_call: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        """(rpc, outcome, code) → the bound histogram and counter children: ``labels()`` hashes
        and locks on every call, a dictionary read does not (the label sets are few)."""

    def set_state(self, component: str, version: str, schema_hash: str, reason: str) -> None:
        """Publish what ``component`` serves now (``reason`` '' = the learned model)."""
        for name in FALLBACK_REASONS:
            self.fallback.labels(component, name).set(1 if name == reason else 0)
        for labels in _series_of(self.model_info, component):
            self.model_info.remove(*labels)
        self.model_info.labels(component, version, schema_hash).set(1)

    def observe(self, rpc: str, outcome: str, code: str, seconds: float) -> None:
        """One answered request."""
        bound = self._per_call.get((rpc, outcome, code))
        if bound is None:  # first of its kind; a racing thread binds the same children
            bound = (self.decision_seconds.labels(rpc, outcome), self.requests.labels(rpc, code))
            self._per_call[(rpc, outcome, code)] = bound
        histogram, counter = bound
        histogram.observe(seconds)
        counter.inc()


def _series_of(gauge: Gauge, component: str) -> Iterable[tuple[str, ...]]:
    """Label tuples of ``gauge`` whose first label is ``component`` (to drop stale versions)."""
    return [
        tuple(s.labels[n] for n in ("component", "version", "schema_hash"))
        for metric in gauge.collect()
        for s in metric.samples
        if s.labels.get("component") == component
    ]
