"""The collector's time-scale conversion: a slowed-down data plane in the box's units."""

from __future__ import annotations

import pytest

from ecrl.policies.base import PodMetrics
from services.collector.observation import Built, to_box_time
from tests.unit.policies.observations import make_observation


def built(**overrides) -> Built:
    pods = (
        PodMetrics("a", True, 0.0, 1.0, 1.9, queue_time_avg_s=0.08, request_rate_rps=10.0),
        PodMetrics("b", True, 0.0, 1.0, None, queue_time_avg_s=None, request_rate_rps=None),
    )
    fields = {"request_rate_rps": 10.0, "p95_latency_s": 0.6, "gpu_util_ratio": 0.7}
    obs = make_observation(100.0, pods, **{**fields, **overrides})
    return Built(obs, ("cpu_usage_cores@b",), 99.0, {"latency_avg_s": 0.4, "x_s": None})


def test_rates_times_scale_latencies_divided_the_rest_unchanged() -> None:
    out = to_box_time(built(), 4.0)
    o = out.observation
    assert o.request_rate_rps == pytest.approx(40.0)
    assert o.p95_latency_s == pytest.approx(0.15)
    assert o.pods[0].request_rate_rps == pytest.approx(40.0)
    assert o.pods[0].queue_time_avg_s == pytest.approx(0.02)
    assert o.pods[0].cpu_usage_cores == 1.9  # CPU-seconds per second: same on the box
    assert o.gpu_util_ratio == 0.7 and o.slo_p95_s == built().observation.slo_p95_s
    assert out.diagnostics == {"latency_avg_s": pytest.approx(0.1), "x_s": None}
    assert out.missing_inputs == ("cpu_usage_cores@b",) and out.observed_at_s == 99.0


def test_missing_stays_missing_and_scale_one_is_the_identity() -> None:
    b = built(p95_latency_s=None)
    out = to_box_time(b, 4.0)
    assert out.observation.p95_latency_s is None
    assert out.observation.pods[1].request_rate_rps is None
    assert out.observation.pods[1].queue_time_avg_s is None
    assert to_box_time(b, 1.0) is b
