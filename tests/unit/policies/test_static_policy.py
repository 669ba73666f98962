"""Static allocation: one action after reset, then no-ops."""

from __future__ import annotations

import pytest

from ecrl.errors import ConfigError
from ecrl.policies import StaticPolicy, make_policy
from ecrl.policies.base import Observation


def observe(t: float, replicas: int = 1) -> Observation:
    return Observation(
        time_s=t,
        pods=(),
        desired_replicas=replicas,
        min_replicas=1,
        max_replicas=8,
        cpu_request_cores=1.0,
        cpu_limit_cores=2.0,
        memory_request_bytes=2**30,
        memory_limit_bytes=2**31,
        max_batch_size=8,
        batch_delay_s=0.001,
        instance_count=1,
        request_rate_rps=None,
        p95_latency_s=None,
        success_ratio=None,
        gpu_util_ratio=None,
        vram_used_bytes=None,
        free_gpu_slots=8,
        slo_p95_s=0.1,
    )


def test_static_issues_fixed_targets_once_then_no_ops() -> None:
    policy = make_policy("static", replicas=3, max_batch_size=16, instance_count=2)
    first = policy.decide(observe(0.0))
    assert (first.desired_replicas, first.max_batch_size, first.instance_count) == (3, 16, 2)
    assert first.batch_delay_s is None and first.cpu_request_cores is None
    assert all(policy.decide(observe(t)).is_noop() for t in (15.0, 30.0, 45.0))


def test_static_reissues_after_reset() -> None:
    policy = StaticPolicy()
    assert policy.decide(observe(0.0)).desired_replicas == 1
    assert policy.decide(observe(15.0)).is_noop()
    policy.reset()
    assert policy.decide(observe(30.0)).desired_replicas == 1


def test_static_rejects_out_of_range_replicas_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="'replicas'"):
        make_policy("static", replicas=0)
