"""What the applier sends: resize bodies that keep the QoS class, Triton configs from the ladder."""

from __future__ import annotations

import math

from ecrl.policies.base import Action
from services.scheduler_extender.actuator.apply import (
    KubeApplier,
    config_matches,
    resources_patch,
    triton_config,
)

from .policies.observations import make_observation

GIB = 1024**3


def test_guaranteed_pod_resize_moves_limits_with_requests() -> None:
    obs = make_observation(0.0, cpu_request_cores=2.0, cpu_limit_cores=2.0)
    assert resources_patch(obs, Action(cpu_request_cores=2.5)) == {
        "requests": {"cpu": "2500m"},
        "limits": {"cpu": "2500m"},
    }


def test_burstable_pod_resize_keeps_a_higher_limit() -> None:
    obs = make_observation(0.0, memory_request_bytes=GIB, memory_limit_bytes=4 * GIB)
    patch = resources_patch(obs, Action(memory_request_bytes=GIB + 512 * 2**20))
    assert patch == {"requests": {"memory": str(GIB + 512 * 2**20)}}


def test_no_limit_stays_unlimited() -> None:
    obs = make_observation(0.0, cpu_limit_cores=math.inf)
    assert resources_patch(obs, Action(cpu_request_cores=1.5)) == {"requests": {"cpu": "1500m"}}


def test_triton_config_keeps_the_settings_the_action_leaves_alone() -> None:
    obs = make_observation(0.0, max_batch_size=8, batch_delay_s=0.0, instance_count=2)
    config = triton_config(obs, Action(max_batch_size=16, batch_delay_s=0.002))
    assert config == {
        "max_batch_size": 16,
        "dynamic_batching": {"max_queue_delay_microseconds": 2000},
        "instance_group": [{"count": 2, "kind": "KIND_GPU"}],
    }


def test_a_pod_config_matches_the_target_by_its_settings_alone() -> None:
    obs = make_observation(0.0, max_batch_size=8, batch_delay_s=0.0, instance_count=2)
    target = triton_config(obs, Action(max_batch_size=16, batch_delay_s=0.002))
    served = {  # what Triton answers: more fields, int64 as strings, the GPUs it placed on
        "name": "mobilenetv4",
        "max_batch_size": 16,
        "dynamic_batching": {"max_queue_delay_microseconds": "2000", "preserve_ordering": False},
        "instance_group": [{"name": "g", "count": 2, "kind": "KIND_GPU", "gpus": [0, 1]}],
    }
    assert config_matches(served, target)
    assert not config_matches({**served, "max_batch_size": 8}, target)
    assert not config_matches({**served, "dynamic_batching": {}}, target)
    assert not config_matches({**served, "instance_group": [{"count": 1}]}, target)
    assert not config_matches({}, target)  # a pod that did not answer is loaded


def test_a_failing_triton_reload_is_a_result_not_an_exception() -> None:
    def refuse(config: dict) -> None:
        raise ConnectionRefusedError("connection refused")

    applier = KubeApplier(None, "default", "mobilenetv4-triton", refuse)  # no API call made
    result = applier.reload({"max_batch_size": 8})
    assert (result.op, result.outcome) == ("triton_config", "error")
    assert "refused" in result.detail
