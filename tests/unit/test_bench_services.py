"""The services benchmark's pure helpers: percentiles, target verdicts, its fixtures' shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecrl.bench_services import (
    Latency,
    Pinning,
    client_on,
    gpu_pod,
    latency_line,
    missing_testbed,
    node_manifests,
    pinning,
    rate_line,
    verdict,
)
from services.scheduler_extender.cache import parse_node
from services.scheduler_extender.wire import parse_extender_args


def test_latency_percentiles_are_in_milliseconds() -> None:
    lat = Latency.of([i / 1000 for i in range(1, 101)])  # 1 … 100 ms
    assert lat.n == 100
    assert lat.p50_ms == pytest.approx(50.5)
    assert lat.p99_ms == pytest.approx(99.01)


def test_latency_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        Latency.of([])


def test_median_of_trials_takes_each_percentile_separately() -> None:
    trials = [Latency(1.0, 9.0, 10), Latency(2.0, 3.0, 10), Latency(3.0, 4.0, 10)]
    assert Latency.median_of(trials) == Latency(2.0, 4.0, 30)


@pytest.mark.parametrize(
    ("value", "target", "higher", "text"),
    [
        (0.6, 1.5, False, "×0.40 of target, meets"),
        (1.5, 1.5, False, "×1.00 of target, meets"),
        (3.3, 3.0, False, "×1.10 of target, MISSES"),
        (3000.0, 1500.0, True, "×2.00 of target, meets"),
        (900.0, 1500.0, True, "×0.60 of target, MISSES"),
    ],
)
def test_verdict_says_ratio_and_whether_the_target_is_met(
    value: float, target: float, higher: bool, text: str
) -> None:
    assert verdict(value, target, higher_is_better=higher) == text


def test_latency_line_prints_both_percentiles_and_the_p99_verdict() -> None:
    line = latency_line("x", Latency(0.5, 1.2, 3000), 1.5)
    assert line == "x: p50 0.50 ms  p99 1.20 ms  (n=3,000)  p99 ×0.80 of target, meets (≤ 1.5 ms)"
    assert "target" not in latency_line("x", Latency(0.5, 1.2, 3000))


def test_rate_line_prints_the_rate_and_its_verdict_only_against_a_target() -> None:
    assert (
        rate_line("x", 1812.4, 1500.0) == "x: 1,812 decisions/s  (≥ 1,500: ×1.21 of target, meets)"
    )
    assert rate_line("x", 700.0) == "x: 700 decisions/s"


def test_missing_testbed_names_what_lacks_and_the_make_target(tmp_path: Path) -> None:
    why = missing_testbed(tmp_path, "1.33.13")
    assert why is not None and "kube-apiserver" in why and "make testbed-build" in why


def test_bench_nodes_are_distinct_gpu_nodes_the_extender_reads() -> None:
    doc = node_manifests(100)
    nodes = [parse_node(item) for item in doc["items"]]
    assert len({n.name for n in nodes}) == 100
    assert all(n.gpu_slots_total >= 1 and n.cpu_allocatable_cores >= 8 for n in nodes)
    assert len({(n.gpu_slots_total, n.cpu_allocatable_cores) for n in nodes}) > 10


def test_bench_pod_is_a_pending_one_slot_gpu_pod() -> None:
    args = parse_extender_args({"Pod": gpu_pod(), "Nodes": None, "NodeNames": ["a", "b"]})
    assert args.pod.gpu_slots == 1 and args.pod.node_name == "" and args.node_names == ("a", "b")


def test_pinning_gives_server_and_client_disjoint_cpus_of_this_process() -> None:
    import os
    import shutil

    pin = pinning()
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2 or shutil.which("taskset") is None:
        assert pin is None
        return
    assert pin is not None
    assert set(pin.server) | set(pin.client) == allowed
    assert not set(pin.server) & set(pin.client) and pin.server and pin.client


def test_pinning_describes_where_each_side_ran() -> None:
    assert Pinning((1,), (0,)).describe() == "server on CPU 1, client on CPU 0"
    assert Pinning((3,), (0, 1, 2)).describe() == "server on CPU 3, client on CPU 0,1,2"


def test_client_on_restores_the_affinity() -> None:
    import os

    before = os.sched_getaffinity(0)
    one = min(before)
    with client_on([one]):
        assert os.sched_getaffinity(0) == {one}
    assert os.sched_getaffinity(0) == before
    with client_on(None):
        assert os.sched_getaffinity(0) == before
