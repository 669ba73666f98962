"""The versioned state vector: one encoding of an :class:`Observation` for every learned policy.

The twin (training, ``make demo``), the collector (Prometheus on the testbed or the GPU box)
and the policy server all go through :func:`encode`, so a policy sees the same features in
training and in production. The schema's hash is written into the ONNX metadata and checked at
load time: a policy trained on another feature list is refused instead of silently misread.

Missing inputs are never invented: each optional feature has a ``*_missing`` flag set to 1 and
its value set to 0, and the policy learns what a missing metric means (training drops metrics
the way a cold or broken pipeline does).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ecrl.errors import InvalidRequest
from ecrl.policies.base import Observation

SCHEMA_VERSION = "ecrl.state/v1"
GIB = 1024**3
AGE_CAP_S = 600.0
"""Seconds since the last change are capped: beyond 10 min the difference carries no signal."""
STATE_BOUND = 1e6
"""Every entry is clipped to ±this (a bounded observation space; no real input comes close)."""
RATIO_CAP = 10.0
"""p95/SLO and similar ratios are capped so a collapsed service does not dominate normalization."""


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _max(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _cap(v: float | None, cap: float) -> float | None:
    return None if v is None else min(v, cap)


@dataclass(frozen=True)
class Feature:
    """One entry of the state vector: name (with unit), may it be missing, how to read it."""

    name: str
    optional: bool
    read: Callable[[Observation], float | None]
    doc: str


def _ratio(num: float | None, den: float | None) -> float | None:
    """num / den, missing when either is missing or the denominator is not positive."""
    if num is None or den is None or not den > 0:
        return None
    return num / den


def _ready(o: Observation) -> int:
    return o.ready_replicas


def _cpu_usage_ratio(o: Observation) -> float | None:
    used = _mean([p.cpu_usage_cores for p in o.pods if p.ready])
    return _cap(_ratio(used, o.cpu_request_cores), RATIO_CAP)


def _queue_time_ms(o: Observation) -> float | None:
    q = _mean([p.queue_time_avg_s for p in o.pods if p.ready])
    return _cap(None if q is None else 1e3 * q, 1e4)


FEATURES: tuple[Feature, ...] = (
    Feature("request_rate_rps", True, lambda o: o.request_rate_rps, "offered load"),
    Feature(
        "rate_per_ready_rps",
        True,
        lambda o: None if o.request_rate_rps is None else o.request_rate_rps / max(_ready(o), 1),
        "load per serving replica",
    ),
    Feature(
        "p95_over_slo",
        True,
        lambda o: _cap(_ratio(o.p95_latency_s, o.slo_p95_s), RATIO_CAP),
        "p95 latency / SLO (capped at 10)",
    ),
    Feature("success_ratio", True, lambda o: o.success_ratio, "successful / all requests"),
    Feature("gpu_util_ratio", True, lambda o: o.gpu_util_ratio, "DCGM GPU utilization / 100"),
    Feature(
        "vram_used_gib",
        True,
        lambda o: None if o.vram_used_bytes is None else o.vram_used_bytes / GIB,
        "framebuffer used",
    ),
    Feature(
        "vram_free_gib",
        True,
        lambda o: None if o.vram_free_bytes is None else o.vram_free_bytes / GIB,
        "framebuffer free on hosting GPUs",
    ),
    Feature("cpu_usage_ratio", True, _cpu_usage_ratio, "mean ready-pod CPU usage / request"),
    Feature(
        "memory_usage_ratio",
        True,
        lambda o: (
            None
            if (m := _max([p.memory_usage_bytes for p in o.pods])) is None
            else m / o.memory_request_bytes
        ),
        "largest pod working set / request (OOM risk)",
    ),
    Feature("queue_time_ms", True, _queue_time_ms, "mean Triton queue time of ready pods"),
    Feature(
        "concurrency_per_ready",
        True,
        lambda o: _mean([p.concurrency for p in o.pods if p.ready]),
        "mean in-flight requests per ready pod",
    ),
    Feature("desired_replicas", False, lambda o: o.desired_replicas, "spec.replicas"),
    Feature("ready_replicas", False, _ready, "ready pods"),
    Feature("pending_replicas", False, lambda o: o.pending_replicas, "pods not ready"),
    Feature(
        "replica_headroom_up", False, lambda o: o.max_replicas - o.desired_replicas, "max − desired"
    ),
    Feature(
        "replica_headroom_down",
        False,
        lambda o: o.desired_replicas - o.min_replicas,
        "desired − min",
    ),
    Feature("free_gpu_slots", False, lambda o: o.free_gpu_slots, "unallocated time-sliced GPUs"),
    Feature("cpu_request_cores", False, lambda o: o.cpu_request_cores, "per pod"),
    Feature("memory_request_gib", False, lambda o: o.memory_request_bytes / GIB, "per pod"),
    Feature("log2_max_batch_size", False, lambda o: math.log2(max(o.max_batch_size, 1)), "Triton"),
    Feature("batch_delay_ms", False, lambda o: 1e3 * o.batch_delay_s, "Triton queue delay"),
    Feature("instance_count", False, lambda o: o.instance_count, "Triton instance group"),
    Feature(
        "last_change_age_s",
        True,
        lambda o: _cap(o.last_change_age_s, AGE_CAP_S),
        "since any setting last changed (capped at 600 s)",
    ),
    Feature("slo_p95_ms", False, lambda o: 1e3 * o.slo_p95_s, "the latency target"),
)

OPTIONAL = tuple(f for f in FEATURES if f.optional)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES) + tuple(
    f"{f.name}_missing" for f in OPTIONAL
)
STATE_DIM = len(FEATURE_NAMES)


def schema_hash() -> str:
    """SHA-256 (first 16 hex) of the version and the ordered feature names."""
    blob = json.dumps({"version": SCHEMA_VERSION, "features": FEATURE_NAMES})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


SCHEMA_HASH = schema_hash()


def encode(obs: Observation) -> np.ndarray:
    """The state vector of ``obs`` (float32, :data:`STATE_DIM` long; missing → 0 plus flag 1)."""
    out = np.zeros(STATE_DIM, dtype=np.float64)
    k = len(FEATURES)
    j = 0
    for i, f in enumerate(FEATURES):
        v = f.read(obs)
        if f.optional:
            if v is None or not math.isfinite(v):
                out[k + j] = 1.0
                v = 0.0
            j += 1
        elif v is None or math.isnan(v):  # ±inf is clipped below; NaN has no meaning
            raise InvalidRequest(f"state: required input {f.name} is {v!r}")
        out[i] = float(v)  # type: ignore[arg-type]
    return np.clip(out, -STATE_BOUND, STATE_BOUND).astype(np.float32)


def missing(vector: np.ndarray) -> dict[str, bool]:
    """Which optional features a state vector marks as missing (for logs and the collector)."""
    k = len(FEATURES)
    return {f.name: bool(vector[k + j] > 0.5) for j, f in enumerate(OPTIONAL)}


def describe() -> list[dict[str, object]]:
    """The schema as plain data (written to the ONNX metadata and served by GetPolicyInfo)."""
    docs = [{"name": f.name, "optional": f.optional, "doc": f.doc} for f in FEATURES]
    flags = [
        {"name": f"{f.name}_missing", "optional": False, "doc": "1 = missing"} for f in OPTIONAL
    ]
    return docs + flags
