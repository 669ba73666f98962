"""Static allocation: one action after reset, then no-ops."""

from __future__ import annotations

import pytest

from ecrl.errors import ConfigError
from ecrl.policies import StaticPolicy, make_policy
from ecrl.policies.base import Observation

from .observations import make_observation


def observe(t: float, replicas: int = 1) -> Observation:
    return make_observation(t, desired_replicas=replicas)


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
