"""One builder for the Observations the policy tests feed in (neutral defaults)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ecrl.policies.base import Observation, PodMetrics


def make_observation(t: float, pods: Iterable[PodMetrics] = (), **overrides: Any) -> Observation:
    """An Observation at time ``t`` with ``pods``; any other field can be overridden."""
    pods = tuple(pods)
    fields: dict[str, Any] = {
        "desired_replicas": len(pods),
        "min_replicas": 1,
        "max_replicas": 8,
        "cpu_request_cores": 1.0,
        "cpu_limit_cores": 2.0,
        "memory_request_bytes": 2**30,
        "memory_limit_bytes": 2**31,
        "max_batch_size": 8,
        "batch_delay_s": 0.001,
        "instance_count": 1,
        "request_rate_rps": None,
        "p95_latency_s": None,
        "success_ratio": None,
        "gpu_util_ratio": None,
        "vram_used_bytes": None,
        "free_gpu_slots": 8,
        "slo_p95_s": 0.1,
    }
    fields.update(overrides)
    return Observation(time_s=t, pods=pods, **fields)
