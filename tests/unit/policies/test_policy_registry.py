"""make_policy: every baseline by name, with validated configuration."""

from __future__ import annotations

import pytest

from ecrl.errors import ConfigError
from ecrl.policies import POLICY_NAMES, HpaPolicy, Policy, make_policy


@pytest.mark.parametrize("name", ["hpa-cpu", "hpa-queue", "kpa", "static"])
def test_registry_builds_each_baseline_as_a_policy(name: str) -> None:
    policy = make_policy(name)
    assert isinstance(policy, Policy)
    assert policy.name == name
    assert policy.period_s > 0


def test_registry_lists_the_four_baselines() -> None:
    assert set(POLICY_NAMES) == {"hpa-cpu", "hpa-queue", "kpa", "static"}


def test_registry_rejects_unknown_policy_name() -> None:
    with pytest.raises(ConfigError, match="'name'"):
        make_policy("vpa")


def test_registry_rejects_unknown_config_key() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        make_policy("kpa", panic_window_s=6)


def test_registry_names_nested_field_out_of_range() -> None:
    bad = {"scale_up": {"policies": [{"type": "Pods", "value": 4, "period_s": 3600}]}}
    with pytest.raises(ConfigError, match=r"behavior\.scale_up\.policies\[0\]\.period_s"):
        make_policy("hpa-cpu", behavior=bad)


def test_registry_keeps_upstream_defaults_for_unset_behavior_fields() -> None:
    policy = make_policy("hpa-cpu", behavior={"scale_down": {"select_policy": "Disabled"}})
    assert isinstance(policy, HpaPolicy)
    down = policy.config.behavior.scale_down
    assert down.stabilization_window_s == 300
    assert [(p.type, p.value, p.period_s) for p in down.policies] == [("Percent", 100, 15)]
    up = policy.config.behavior.scale_up
    assert [(p.type, p.value) for p in up.policies] == [("Percent", 100), ("Pods", 4)]


def test_registry_metric_is_fixed_by_the_hpa_name() -> None:
    queue = make_policy("hpa-queue")
    assert isinstance(queue, HpaPolicy)
    assert queue.config.metric == "queue_time"
    with pytest.raises(ConfigError, match="'metric'"):
        make_policy("hpa-cpu", metric="queue_time")
