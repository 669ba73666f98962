"""The versioned state vector: shape, missing flags, the schema hash and bounded values."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecrl import schema
from ecrl.errors import InvalidRequest
from ecrl.policies.base import Observation, PodMetrics
from ecrl.schema import (
    FEATURE_NAMES,
    FEATURES,
    GIB,
    OPTIONAL,
    SCHEMA_HASH,
    STATE_BOUND,
    STATE_DIM,
    describe,
    encode,
    missing,
)

from .policies.observations import make_observation

OPTIONAL_NAMES = {f.name for f in OPTIONAL}


def pod(
    name: str = "p0",
    *,
    ready: bool = True,
    cpu: float | None = 0.5,
    queue_s: float | None = 0.004,
    concurrency: float | None = 3.0,
    memory: float | None = 1.5 * GIB,
) -> PodMetrics:
    return PodMetrics(
        name=name,
        ready=ready,
        start_time_s=0.0,
        ready_time_s=1.0 if ready else None,
        cpu_usage_cores=cpu,
        queue_time_avg_s=queue_s,
        concurrency=concurrency,
        memory_usage_bytes=memory,
    )


def full_observation(**overrides: Any) -> Observation:
    """Every optional input present (two ready pods with all their metrics)."""
    fields: dict[str, Any] = {
        "desired_replicas": 2,
        "min_replicas": 1,
        "max_replicas": 4,
        "cpu_request_cores": 2.0,
        "memory_request_bytes": 4 * GIB,
        "max_batch_size": 8,
        "batch_delay_s": 0.002,
        "instance_count": 1,
        "request_rate_rps": 40.0,
        "p95_latency_s": 0.075,
        "success_ratio": 0.99,
        "gpu_util_ratio": 0.6,
        "vram_used_bytes": 2.0 * GIB,
        "vram_free_bytes": 6.0 * GIB,
        "node_cpu_free_cores": 3.0,
        "node_memory_free_bytes": 8.0 * GIB,
        "last_change_age_s": 42.0,
        "free_gpu_slots": 2,
        "slo_p95_s": 0.15,
    }
    fields.update(overrides)
    pods = fields.pop("pods", (pod("p0", cpu=0.5, memory=GIB), pod("p1", cpu=1.5, memory=2 * GIB)))
    return make_observation(100.0, pods, **fields)


def value(vec: np.ndarray, name: str) -> float:
    return float(vec[FEATURE_NAMES.index(name)])


def flag(vec: np.ndarray, name: str) -> float:
    return float(vec[FEATURE_NAMES.index(f"{name}_missing")])


# ------------------------------------------------------------------ layout


def test_encode_returns_a_float32_vector_of_state_dim() -> None:
    vec = encode(full_observation())
    assert vec.dtype == np.float32
    assert vec.shape == (STATE_DIM,)


def test_state_dim_is_one_entry_per_feature_plus_one_flag_per_optional_feature() -> None:
    assert len(FEATURES) + len(OPTIONAL) == STATE_DIM
    assert len(set(FEATURE_NAMES)) == STATE_DIM
    assert [d["name"] for d in describe()] == list(FEATURE_NAMES)


# ----------------------------------------------------------- missing flags


def test_all_optional_inputs_present_gives_no_missing_flag() -> None:
    vec = encode(full_observation())
    assert not any(missing(vec).values())
    for name in OPTIONAL_NAMES:
        assert flag(vec, name) == 0.0


def test_present_features_carry_their_values() -> None:
    vec = encode(full_observation())
    assert value(vec, "request_rate_rps") == pytest.approx(40.0)
    assert value(vec, "rate_per_ready_rps") == pytest.approx(20.0)
    assert value(vec, "p95_over_slo") == pytest.approx(0.5)
    assert value(vec, "vram_free_gib") == pytest.approx(6.0)
    assert value(vec, "cpu_usage_ratio") == pytest.approx(0.5)  # mean 1.0 core / 2 requested
    assert value(vec, "memory_usage_ratio") == pytest.approx(0.5)  # largest 2 GiB / 4 GiB
    assert value(vec, "queue_time_ms") == pytest.approx(4.0)
    assert value(vec, "concurrency_per_ready") == pytest.approx(3.0)
    assert value(vec, "last_change_age_s") == pytest.approx(42.0)
    assert value(vec, "replica_headroom_up") == 2.0
    assert value(vec, "replica_headroom_down") == 1.0
    assert value(vec, "log2_max_batch_size") == pytest.approx(3.0)
    assert value(vec, "batch_delay_ms") == pytest.approx(2.0)
    assert value(vec, "slo_p95_ms") == pytest.approx(150.0)


def test_an_observation_with_no_optional_input_flags_every_optional_feature() -> None:
    obs = make_observation(0.0, ())  # no pods, no metrics, none of the new optional fields
    vec = encode(obs)
    assert missing(vec) == {name: True for name in OPTIONAL_NAMES}
    for name in OPTIONAL_NAMES:
        assert value(vec, name) == 0.0
        assert flag(vec, name) == 1.0


def _without_pod_metric(metric: str) -> dict[str, Any]:
    pods = tuple(
        dataclasses.replace(p, **{metric: None})
        for p in (pod("p0", cpu=0.5, memory=GIB), pod("p1", cpu=1.5, memory=2 * GIB))
    )
    return {"pods": pods}


@pytest.mark.parametrize(
    ("overrides", "expected_missing"),
    [
        ({"request_rate_rps": None}, {"request_rate_rps", "rate_per_ready_rps"}),
        ({"p95_latency_s": None}, {"p95_over_slo"}),
        ({"success_ratio": None}, {"success_ratio"}),
        ({"gpu_util_ratio": None}, {"gpu_util_ratio"}),
        ({"vram_used_bytes": None}, {"vram_used_gib"}),
        ({"vram_free_bytes": None}, {"vram_free_gib"}),
        ({"last_change_age_s": None}, {"last_change_age_s"}),
        (_without_pod_metric("cpu_usage_cores"), {"cpu_usage_ratio"}),
        (_without_pod_metric("memory_usage_bytes"), {"memory_usage_ratio"}),
        (_without_pod_metric("queue_time_avg_s"), {"queue_time_ms"}),
        (_without_pod_metric("concurrency"), {"concurrency_per_ready"}),
    ],
    ids=lambda x: "-".join(sorted(x)) if isinstance(x, set) else None,
)
def test_one_missing_input_flags_exactly_the_features_read_from_it(
    overrides: dict[str, Any], expected_missing: set[str]
) -> None:
    vec = encode(full_observation(**overrides))
    flagged = {name for name, m in missing(vec).items() if m}
    assert flagged == expected_missing
    for name in expected_missing:
        assert value(vec, name) == 0.0
        assert flag(vec, name) == 1.0


def test_pod_metrics_of_unready_pods_count_only_for_memory() -> None:
    pods = (pod("p0", ready=False), pod("p1", ready=False))
    vec = encode(full_observation(pods=pods))
    flagged = {name for name, m in missing(vec).items() if m}
    assert flagged == {"cpu_usage_ratio", "queue_time_ms", "concurrency_per_ready"}
    assert value(vec, "memory_usage_ratio") == pytest.approx(1.5 / 4)
    assert value(vec, "rate_per_ready_rps") == pytest.approx(40.0)  # divided by max(ready, 1)


READ_FROM = {
    "request_rate_rps": {"request_rate_rps", "rate_per_ready_rps"},
    "p95_latency_s": {"p95_over_slo"},
    "success_ratio": {"success_ratio"},
    "last_change_age_s": {"last_change_age_s"},
}
CAPPED = {"p95_latency_s", "last_change_age_s"}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", sorted(READ_FROM))
def test_non_finite_optional_input_is_flagged_missing(field: str, bad: float) -> None:
    vec = encode(full_observation(**{field: bad}))
    assert np.isfinite(vec).all()
    flagged = {name for name, m in missing(vec).items() if m}
    if bad == math.inf and field in CAPPED:
        assert flagged == set()  # a saturated reading: capped, not missing
    else:
        assert flagged == READ_FROM[field]


def test_ratios_and_age_are_capped() -> None:
    vec = encode(full_observation(p95_latency_s=1e3, last_change_age_s=1e9))
    assert value(vec, "p95_over_slo") == schema.RATIO_CAP
    assert value(vec, "last_change_age_s") == schema.AGE_CAP_S


# ------------------------------------------------------------------- hash


def test_schema_hash_is_stable_across_calls() -> None:
    assert schema.schema_hash() == schema.schema_hash() == SCHEMA_HASH
    assert re.fullmatch(r"[0-9a-f]{16}", SCHEMA_HASH)


@pytest.mark.parametrize(
    "names",
    [
        FEATURE_NAMES[:-1],
        (*FEATURE_NAMES, "new_feature"),
        tuple(reversed(FEATURE_NAMES)),
        (FEATURE_NAMES[0] + "_v2", *FEATURE_NAMES[1:]),
    ],
    ids=["dropped", "added", "reordered", "renamed"],
)
def test_schema_hash_changes_when_the_feature_list_changes(
    monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]
) -> None:
    monkeypatch.setattr(schema, "FEATURE_NAMES", names)
    assert schema.schema_hash() != SCHEMA_HASH


def test_schema_hash_changes_with_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "SCHEMA_VERSION", "ecrl.state/v2")
    assert schema.schema_hash() != SCHEMA_HASH


# ---------------------------------------------------------- bounded values


def test_values_are_clipped_to_the_state_bound() -> None:
    vec = encode(full_observation(desired_replicas=10**8, max_replicas=4, batch_delay_s=1e9))
    assert value(vec, "desired_replicas") == STATE_BOUND
    assert value(vec, "replica_headroom_up") == -STATE_BOUND
    assert value(vec, "batch_delay_ms") == STATE_BOUND
    assert np.abs(vec).max() <= STATE_BOUND


def test_infinite_required_input_is_clipped_not_leaked() -> None:
    vec = encode(full_observation(batch_delay_s=math.inf))
    assert np.isfinite(vec).all()
    assert value(vec, "batch_delay_ms") == STATE_BOUND


def test_nan_in_a_required_input_is_refused_with_the_field_named() -> None:
    with pytest.raises(InvalidRequest, match="cpu_request_cores"):
        encode(full_observation(cpu_request_cores=math.nan))


def test_huge_finite_input_is_clipped_without_an_overflow_warning() -> None:
    vec = encode(full_observation(request_rate_rps=1e300))
    assert value(vec, "request_rate_rps") == STATE_BOUND


@pytest.mark.parametrize(
    "overrides",
    [{"max_batch_size": 0}, {"cpu_request_cores": 0.0}, {"slo_p95_s": 0.0}],
    ids=["triton-batching-disabled", "no-cpu-request", "zero-slo"],
)
def test_zero_valued_settings_encode_without_raising(overrides: dict[str, Any]) -> None:
    vec = encode(full_observation(**overrides))
    assert np.isfinite(vec).all()


finite_or_not = st.one_of(
    st.none(),
    st.floats(min_value=-1e30, max_value=1e30),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0]),
)


@st.composite
def messy_pods(draw: st.DrawFn) -> tuple[PodMetrics, ...]:
    n = draw(st.integers(0, 4))
    return tuple(
        PodMetrics(
            name=f"p{i}",
            ready=draw(st.booleans()),
            start_time_s=0.0,
            ready_time_s=None,
            cpu_usage_cores=draw(finite_or_not),
            queue_time_avg_s=draw(finite_or_not),
            concurrency=draw(finite_or_not),
            memory_usage_bytes=draw(finite_or_not),
        )
        for i in range(n)
    )


@settings(max_examples=200, deadline=None)
@given(
    pods=messy_pods(),
    rate=finite_or_not,
    p95=finite_or_not,
    success=finite_or_not,
    util=finite_or_not,
    vram_used=finite_or_not,
    vram_free=finite_or_not,
    age=finite_or_not,
    desired=st.integers(0, 10**9),
    batch=st.integers(1, 2**20),
)
def test_encode_is_always_finite_bounded_and_zero_where_flagged(
    pods: tuple[PodMetrics, ...],
    rate: float | None,
    p95: float | None,
    success: float | None,
    util: float | None,
    vram_used: float | None,
    vram_free: float | None,
    age: float | None,
    desired: int,
    batch: int,
) -> None:
    obs = make_observation(
        5.0,
        pods,
        desired_replicas=desired,
        max_batch_size=batch,
        request_rate_rps=rate,
        p95_latency_s=p95,
        success_ratio=success,
        gpu_util_ratio=util,
        vram_used_bytes=vram_used,
        vram_free_bytes=vram_free,
        last_change_age_s=age,
    )
    vec = encode(obs)
    assert vec.dtype == np.float32 and vec.shape == (STATE_DIM,)
    assert np.isfinite(vec).all()
    assert np.abs(vec).max() <= STATE_BOUND
    flags = vec[len(FEATURES) :]
    assert set(np.unique(flags)) <= {0.0, 1.0}
    for j, f in enumerate(OPTIONAL):
        if flags[j] == 1.0:
            assert vec[FEATURES.index(f)] == 0.0
    assert missing(vec) == {f.name: bool(flags[j]) for j, f in enumerate(OPTIONAL)}
