"""The collector's observation builder, from canned PromQL results (no Prometheus, no I/O).

Each canned result is what :mod:`services.collector.sources` hands the builder: per query the
series with their value and the time of the raw samples behind them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ecrl import schema
from services.collector import queries
from services.collector.collector import Collector
from services.collector.config import CollectorConfig
from services.collector.observation import (
    Batching,
    BuildInput,
    ChangeTracker,
    Sample,
    Settings,
    StaleInputs,
    build,
    change_age,
)
from services.collector.sources import (
    Fetched,
    SourceError,
    join,
    model_config,
    parse_model_config,
)

NOW = 1_700_000_000.0
STALE_AFTER = 15.0
PODS = ("mobilenetv4-triton-7c9f-aaaaa", "mobilenetv4-triton-7c9f-bbbbb")
GIB = 1024**3
SETTINGS = Settings(min_replicas=1, max_replicas=4, slo_p95_s=0.15)
BATCHING = Batching(max_batch_size=8, batch_delay_s=0.0005, instance_count=2)


def per_pod(values: dict[str, float], age_s: float = 2.0) -> list[Sample]:
    return [Sample({"pod": p}, v, NOW - age_s) for p, v in values.items()]


def canned(**override: list[Sample] | None) -> dict[str, list[Sample]]:
    """A complete, fresh set of results for two ready pods on node ``box`` (one GPU)."""
    gpu = {"Hostname": "box", "gpu": "0"}
    results: dict[str, list[Sample] | None] = {
        "pods": [Sample({"pod": p, "node": "box"}, 1.0, NOW - 3) for p in PODS],
        "desired_replicas": [Sample({}, 2.0, NOW - 3)],
        "deployment_created": [Sample({}, NOW - 3600, NOW - 3)],
        "generation_history": [
            Sample({}, 1.0 if t < NOW - 100 else 2.0, t) for t in np.arange(NOW - 655, NOW, 5.0)
        ],
        "pod_ready": per_pod({p: 1.0 for p in PODS}, 3),
        "pod_created": per_pod({PODS[0]: NOW - 900, PODS[1]: NOW - 300}, 3),
        "pod_ready_time": per_pod({PODS[0]: NOW - 880, PODS[1]: NOW - 280}, 3),
        "pod_cpu_request": per_pod({p: 2.0 for p in PODS}, 3),
        "pod_memory_request": per_pod({p: 4.0 * GIB for p in PODS}, 3),
        "pod_cpu_limit": per_pod({p: 2.0 for p in PODS}, 3),
        "pod_memory_limit": per_pod({p: 4.0 * GIB for p in PODS}, 3),
        "free_gpu_slots": [Sample({"node": "box"}, 2.0, NOW - 3)],
        "node_cpu_free": [Sample({"node": "box"}, 4.0, NOW - 3)],
        "node_memory_free": [Sample({"node": "box"}, 8.0 * GIB, NOW - 3)],
        "success_rate": per_pod({PODS[0]: 9.0, PODS[1]: 10.0}),
        "failure_rate": per_pod({PODS[0]: 1.0, PODS[1]: 0.0}),
        "queue_time_avg": per_pod({PODS[0]: 0.004, PODS[1]: 0.006}),
        "concurrency": per_pod({PODS[0]: 0.5, PODS[1]: 1.5}),
        "latency_avg": per_pod({PODS[0]: 0.05, PODS[1]: 0.15}),
        "compute_infer_avg": per_pod({PODS[0]: 0.02, PODS[1]: 0.02}),
        "p95_latency": [],  # Triton without its latency summary: no series
        "cpu_usage": per_pod({PODS[0]: 1.0, PODS[1]: 1.5}),
        "memory_working_set": per_pod({PODS[0]: 1.0 * GIB, PODS[1]: 2.0 * GIB}),
        # the GPU of a node that hosts no replica is not averaged in
        "gpu_util": [
            Sample(gpu, 60.0, NOW - 2),
            Sample({"Hostname": "other", "gpu": "0"}, 0, NOW - 2),
        ],
        "fb_used": [Sample(gpu, 3000.0, NOW - 2)],
        "fb_free": [Sample(gpu, 7240.0, NOW - 2)],
    }
    results.update(override)
    return {k: v for k, v in results.items() if v is not None}


def inp(results: dict[str, list[Sample]], batching: Batching | None = BATCHING) -> BuildInput:
    return BuildInput(results, batching, SETTINGS, NOW, STALE_AFTER, (50.0, 50.0))


def features(vector: np.ndarray) -> dict[str, float]:
    return dict(zip(schema.FEATURE_NAMES, vector.tolist(), strict=True))


def test_fresh_results_build_the_observation_the_schema_encodes() -> None:
    built = build(inp(canned()))
    obs = built.observation

    assert [p.name for p in obs.pods] == list(PODS)
    assert obs.ready_replicas == 2 and obs.pending_replicas == 0 and obs.desired_replicas == 2
    assert obs.request_rate_rps == pytest.approx(20.0)
    assert obs.success_ratio == pytest.approx(19.0 / 20.0)
    assert obs.gpu_util_ratio == pytest.approx(0.60)  # only the GPU on the hosting node
    assert obs.vram_used_bytes == 3000 * 2**20 and obs.vram_free_bytes == 7240 * 2**20
    assert obs.cpu_request_cores == 2.0 and obs.memory_request_bytes == 4 * GIB
    assert obs.free_gpu_slots == 2
    assert obs.node_cpu_free_cores == 4.0 and obs.node_memory_free_bytes == 8 * GIB
    assert (obs.max_batch_size, obs.batch_delay_s, obs.instance_count) == (8, 0.0005, 2)
    assert obs.pods[1].queue_time_avg_s == 0.006 and obs.pods[1].cpu_usage_cores == 1.5
    assert obs.pods[0].ready_time_s == NOW - 880 and obs.pods[0].start_time_s == NOW - 900
    assert built.observed_at_s == NOW - 2  # the newest sample used
    # generation changed 100 s ago, Triton's config 50 s ago: the latest change counts
    assert obs.last_change_age_s == pytest.approx(50.0)

    f = features(schema.encode(obs))
    assert f["request_rate_rps"] == pytest.approx(20.0)
    assert f["rate_per_ready_rps"] == pytest.approx(10.0)
    assert f["queue_time_ms"] == pytest.approx(5.0)
    assert f["cpu_usage_ratio"] == pytest.approx(1.25 / 2.0)
    assert f["log2_max_batch_size"] == 3.0 and f["batch_delay_ms"] == pytest.approx(0.5)
    # p95: Triton exposes no latency histogram by default; missing, flagged, not invented
    assert f["p95_over_slo"] == 0.0 and f["p95_over_slo_missing"] == 1.0
    assert built.missing_inputs == ("p95_latency_s",)
    assert built.diagnostics["latency_avg_s"] == pytest.approx((0.05 * 10 + 0.15 * 10) / 20)


def test_stale_optional_sample_is_missing_and_flagged_not_zero() -> None:
    old = NOW - STALE_AFTER - 1
    results = canned(gpu_util=[Sample({"Hostname": "box", "gpu": "0"}, 60.0, old)])

    built = build(inp(results))

    assert built.observation.gpu_util_ratio is None
    assert "gpu_util_ratio" in built.missing_inputs
    vector = schema.encode(built.observation)
    assert schema.missing(vector)["gpu_util_ratio"] is True
    assert features(vector)["gpu_util_ratio_missing"] == 1.0


def test_sample_without_a_sample_time_counts_as_missing() -> None:
    results = canned(cpu_usage=[Sample({"pod": p}, 1.0, None) for p in PODS])

    built = build(inp(results))

    assert all(p.cpu_usage_cores is None for p in built.observation.pods)
    assert {f"cpu_usage_cores@{p}" for p in PODS} <= set(built.missing_inputs)
    assert schema.missing(schema.encode(built.observation))["cpu_usage_ratio"] is True


def test_failed_optional_query_is_missing_and_one_silent_pod_is_listed() -> None:
    results = canned(
        memory_working_set=None, fb_free=None, queue_time_avg=per_pod({PODS[0]: 0.004})
    )

    built = build(inp(results))
    obs = built.observation

    assert all(p.memory_usage_bytes is None for p in obs.pods)
    assert obs.vram_free_bytes is None and "vram_free_bytes" in built.missing_inputs
    assert obs.pods[0].queue_time_avg_s == 0.004 and obs.pods[1].queue_time_avg_s is None
    assert f"queue_time_avg_s@{PODS[1]}" in built.missing_inputs
    f = features(schema.encode(obs))
    assert f["memory_usage_ratio_missing"] == 1.0
    assert f["queue_time_ms"] == pytest.approx(4.0)  # the pod that reports


def test_idle_service_has_no_queue_time_nor_success_ratio() -> None:
    results = canned(
        success_rate=per_pod({p: 0.0 for p in PODS}),
        failure_rate=per_pod({p: 0.0 for p in PODS}),
        queue_time_avg=per_pod({p: math.nan for p in PODS}),  # 0/0 in PromQL
    )

    obs = build(inp(results)).observation

    assert obs.request_rate_rps == 0.0  # no requests is a measurement, not a gap
    assert obs.success_ratio is None
    assert all(p.queue_time_avg_s is None for p in obs.pods)


@pytest.mark.parametrize(
    ("override", "missing"),
    [
        ({"desired_replicas": None}, "desired_replicas"),
        ({"desired_replicas": [Sample({}, 2.0, NOW - 60)]}, "desired_replicas"),
        ({"pods": None}, "pods"),
        ({"pod_cpu_request": None}, "pod_cpu_request"),
        ({"free_gpu_slots": []}, "free_gpu_slots"),
        ({"pod_ready": per_pod({PODS[0]: 1.0}, 3)}, f"pod_ready@{PODS[1]}"),
    ],
)
def test_required_input_missing_or_stale_builds_no_state(override, missing) -> None:
    with pytest.raises(StaleInputs) as err:
        build(inp(canned(**override)))
    assert missing in err.value.missing


def test_no_triton_model_config_builds_no_state() -> None:
    with pytest.raises(StaleInputs, match="triton_model_config"):
        build(inp(canned(), batching=None))


def test_unscheduled_pod_is_pending_and_hosts_nothing() -> None:
    pending = "mobilenetv4-triton-7c9f-ccccc"
    results = canned(
        pods=[
            *(Sample({"pod": p, "node": "box"}, 1.0, NOW - 3) for p in PODS),
            Sample({"pod": pending}, 1.0, NOW - 3),
        ],
        pod_ready=per_pod({PODS[0]: 1.0, PODS[1]: 1.0, pending: 0.0}, 3),
        pod_created=per_pod({PODS[0]: NOW - 900, PODS[1]: NOW - 300, pending: NOW - 5}, 3),
        pod_cpu_request=per_pod({p: 2.0 for p in (*PODS, pending)}, 3),
        pod_memory_request=per_pod({p: 4.0 * GIB for p in (*PODS, pending)}, 3),
    )

    obs = build(inp(results)).observation

    assert (obs.ready_replicas, obs.pending_replicas) == (2, 1)
    assert obs.pods[2].ready_time_s is None and obs.pods[2].cpu_usage_cores is None
    assert obs.gpu_util_ratio == pytest.approx(0.60)


def test_no_limit_series_means_no_limit() -> None:
    obs = build(inp(canned(pod_cpu_limit=[], pod_memory_limit=[]))).observation
    assert obs.cpu_limit_cores == math.inf and obs.memory_limit_bytes == 0


# ------------------------------------------------------------------ time since last change
def history(values: list[float], start: float = NOW - 655) -> list[Sample]:
    return [Sample({}, v, start + 5.0 * i) for i, v in enumerate(values)]


def test_change_age_from_generation_change() -> None:
    points = history([1.0] * 100 + [2.0] * 31)  # last point 5 s ago; changed 155 s ago
    assert change_age(points, NOW - 3600, (200.0, math.inf), NOW, STALE_AFTER) == 155.0
    # Triton's config never read: it may have changed any time, the age is unknown
    assert change_age(points, NOW - 3600, (0.0, math.inf), NOW, STALE_AFTER) is None


def test_change_age_capped_when_nothing_changed_for_ten_minutes() -> None:
    points = history([3.0] * 132)
    assert change_age(points, NOW - 3600, (700.0, math.inf), NOW, STALE_AFTER) == 600.0


def test_change_age_unknown_with_short_history_and_no_change() -> None:
    points = history([3.0] * 10, start=NOW - 45)
    assert change_age(points, NOW - 3600, (45.0, math.inf), NOW, STALE_AFTER) is None


def test_change_age_from_creation_inside_the_window() -> None:
    points = history([1.0] * 10, start=NOW - 45)
    assert change_age(points, NOW - 47, (50.0, math.inf), NOW, STALE_AFTER) == 47.0


def test_change_age_unknown_when_history_is_stale() -> None:
    points = history([1.0, 2.0], start=NOW - 100)
    assert change_age(points, NOW - 3600, (0.0, math.inf), NOW, STALE_AFTER) is None


def test_change_tracker_sees_a_triton_config_change() -> None:
    tracker = ChangeTracker()
    assert tracker.update(BATCHING, NOW) == (0.0, math.inf)
    assert tracker.update(BATCHING, NOW + 5) == (5.0, math.inf)
    bigger = Batching(16, 0.0005, 2)
    assert tracker.update(bigger, NOW + 10) == (0.0, 0.0)
    assert tracker.update(None, NOW + 15) == (5.0, 5.0)


# ------------------------------------------------------------------ adapters' pure parts
def test_join_matches_values_to_sample_times_by_labels() -> None:
    q = queries.BY_NAME["success_rate"]
    values = [
        {"metric": {"pod": "a"}, "value": [NOW, "1.5"]},
        {"metric": {"pod": "b"}, "value": [NOW, "NaN"]},
    ]
    times = [{"metric": {"pod": "a"}, "value": [NOW, str(NOW - 4)]}]

    a, b = join(q, values, times)

    assert (a.value, a.timestamp_s) == (1.5, NOW - 4)
    assert math.isnan(b.value) and b.timestamp_s is None


def test_join_keeps_each_point_of_a_range_selector() -> None:
    q = queries.BY_NAME["generation_history"]
    values = [{"metric": {}, "values": [[NOW - 10, "1"], [NOW - 5, "2"]]}]
    assert [(s.timestamp_s, s.value) for s in join(q, values, None)] == [
        (NOW - 10, 1.0),
        (NOW - 5, 2.0),
    ]


def test_model_config_of_the_emulator_parses() -> None:
    config = {
        "max_batch_size": 8,
        "instance_group": [{"count": 2, "kind": "KIND_GPU"}],
        "dynamic_batching": {"max_queue_delay_microseconds": "500"},  # int64 as a string
    }
    assert parse_model_config(config) == Batching(8, 0.0005, 2)
    no_batcher = {"max_batch_size": 4, "instance_group": [{"count": 1, "gpus": [0, 1]}]}
    assert parse_model_config({**no_batcher, "instance_group": [{"count": 1}]}).batch_delay_s == 0


def test_model_config_round_trips_and_counts_placed_or_configured_instances() -> None:
    batching = Batching(16, 0.002, 3)
    assert parse_model_config(model_config(batching)) == batching
    # Triton lists the GPUs it placed a KIND_GPU group on: ``count`` runs on each
    served = {
        **model_config(batching),
        "instance_group": [{"count": 3, "kind": "KIND_GPU", "gpus": [0, 1]}],
    }
    assert parse_model_config(served).instance_count == 6
    assert parse_model_config(served, placed=False) == batching


@pytest.mark.parametrize(
    "config",
    [
        {"instance_group": [{"count": 1}]},
        {"max_batch_size": 8},
        {"max_batch_size": "eight", "instance_group": [{"count": 1}]},
        [],
    ],
)
def test_model_config_without_the_batching_fields_is_an_error(config) -> None:
    with pytest.raises(SourceError):
        parse_model_config(config)


def test_rendered_queries_have_no_placeholder_left() -> None:
    rendered = Collector(CollectorConfig(), _Source(canned()), lambda: BATCHING).queries
    assert len(rendered) == len(queries.QUERIES)
    for q in rendered:
        assert "${" not in q.promql and "${" not in (q.freshness or "")
    assert set(queries.REQUIRED) == {
        "pods",
        "desired_replicas",
        "pod_ready",
        "pod_created",
        "pod_cpu_request",
        "pod_memory_request",
        "free_gpu_slots",
    }


# ------------------------------------------------------------------ the tick
class _Source:
    def __init__(self, results: dict[str, list[Sample]]) -> None:
        self.results = results

    def fetch(self, queries_, eval_time_s: float) -> Fetched:
        return Fetched(dict(self.results), {})


def test_stale_tick_keeps_the_last_state_and_counts_it() -> None:
    source = _Source(canned())
    now = [NOW]
    collector = Collector(CollectorConfig(), source, lambda: BATCHING, clock=lambda: now[0])

    first = collector.tick()
    assert first.state is not None and first.state.tick == 1
    source.results = canned(desired_replicas=None)
    now[0] = NOW + 5
    second = collector.tick()

    assert second.state is None and second.stale_inputs == ("desired_replicas",)
    assert collector.store.latest() is first.state
    assert collector.store.last_stale == ("desired_replicas",)
    assert collector.state_age_s() == pytest.approx(7.0)  # newest sample was 2 s old
    stale = collector.metrics.registry.get_sample_value(
        "ecrl_collector_ticks_total", {"outcome": "stale"}
    )
    assert stale == 1.0


def test_triton_failure_is_a_counted_query_error() -> None:
    def broken() -> Batching:
        raise SourceError("Triton unreachable")

    collector = Collector(CollectorConfig(), _Source(canned()), broken, clock=lambda: NOW)
    result = collector.tick()

    assert result.state is None and "triton_model_config" in result.query_errors
    errors = collector.metrics.registry.get_sample_value(
        "ecrl_collector_query_errors_total", {"query": "triton_model_config"}
    )
    assert errors == 1.0


# ------------------------------------------------------------------ the command line
@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--period", "abc"], "--period"),
        (["--period", "0"], "--period"),
        (["--prometheus", "ftp://prom:9090"], "--prometheus"),
        (["--min-replicas", "5", "--max-replicas", "2"], "--min-replicas"),
        (["--grpc-listen", "nowhere"], "--grpc-listen"),
        (["--namespace", "Not_A_Label"], "--namespace"),
        (["--log-level", "loud"], "--log-level"),
    ],
)
def test_bad_flag_is_one_line_naming_the_flag_and_exit_2(argv, flag, capsys) -> None:
    from services.collector.__main__ import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"collector: error: {flag}: ")


def test_unknown_flag_and_bad_config_file_are_one_line_errors(tmp_path, capsys) -> None:
    from services.collector.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--bogus"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "collector: error: unrecognized arguments: --bogus\n"
    bad = tmp_path / "c.yaml"
    bad.write_text("perid_s: 5\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--config" in err and "perid_s" in err


def test_config_file_and_environment_fill_the_config(tmp_path, monkeypatch) -> None:
    from services.collector.__main__ import build_parser, config_from_args

    path = tmp_path / "collector.yaml"
    path.write_text("stale_after_s: 20\nmax_replicas: 6\n")
    monkeypatch.setenv("ECRL_COLLECTOR_PERIOD", "2.5")
    args = build_parser().parse_args(["--config", str(path), "--max-replicas", "8"])

    config = config_from_args(args)

    assert (config.stale_after_s, config.max_replicas, config.period_s) == (20.0, 8, 2.5)
