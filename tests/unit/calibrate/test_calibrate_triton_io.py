"""Triton metrics parsing and the closed-loop driver, without a server."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from ecrl.calibrate.points import ServerCounters
from ecrl.calibrate.triton_io import closed_loop, parse_triton_metrics, sequential, summarize

REAL_TRITON = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="mobilenetv4",version="1"} 120
nv_inference_request_success{model="mobilenetv4",version="2"} 30
nv_inference_request_success{model="other",version="1"} 999
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="mobilenetv4",reason="REJECTED",version="1"} 2
nv_inference_request_failure{model="mobilenetv4",reason="TIMEOUT",version="1"} 1
# TYPE nv_inference_count counter
nv_inference_count{model="mobilenetv4",version="1"} 150
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="mobilenetv4",version="1"} 50
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="mobilenetv4",version="1"} 1500000
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="mobilenetv4",version="1"} 150000
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="mobilenetv4",version="1"} 900000
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-1"} 0.4
"""


def test_parses_real_triton_counters_summed_over_versions_for_one_model() -> None:
    counters, emulated = parse_triton_metrics(REAL_TRITON, "mobilenetv4")
    assert not emulated
    assert counters is not None
    assert counters.success == 150
    assert counters.failure == 3
    assert (counters.inference_count, counters.exec_count) == (150, 50)
    assert counters.compute_infer_us == 900000
    assert counters.compute_output_us == 0  # absent → 0 only because success is present


def test_emulated_label_is_detected_and_missing_counters_are_none() -> None:
    text = 'nv_inference_count{model="m",version="1",emulated="true"} 3\n'
    counters, emulated = parse_triton_metrics(text, "m")
    assert emulated
    assert counters is None  # no nv_inference_request_success: not read as zeros
    assert parse_triton_metrics(REAL_TRITON, "absent")[0] is None


def test_counter_delta() -> None:
    a = ServerCounters(1, 0, 2, 1, 10, 1, 0, 5, 0)
    b = ServerCounters(4, 1, 8, 3, 40, 4, 0, 20, 0)
    d = b.minus(a)
    assert (d.success, d.inference_count, d.compute_infer_us) == (3, 6, 15)


def test_summarize_counts_only_requests_completed_inside_the_window() -> None:
    records = [
        (0.5, 0.1, True, None),
        (1.5, 0.2, True, None),
        (2.5, 0.4, True, None),
        (2.6, 0.0, False, "InferenceServerException: boom"),
        (9.0, 5.0, True, None),
    ]
    s = summarize(records, 1.0, 3.0)
    assert (s.ok, s.failed) == (2, 1)
    assert s.throughput_rps == pytest.approx(1.0)
    assert s.latency_mean_s == pytest.approx(0.3)
    assert s.first_error == "InferenceServerException: boom"


class LoopClock:
    """The running event loop's clock (what its sleeps are timed against)."""

    def __call__(self) -> float:
        return asyncio.get_running_loop().time()


class InFlight:
    """A fake request taking ``delay_s`` that records the most requests in flight at once."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.now, self.peak = delay_s, 0, 0

    async def send(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(self.delay_s)
        self.now -= 1


def test_closed_loop_keeps_one_request_per_client_in_flight() -> None:
    counter = InFlight(0.02)
    snaps = itertools.count()

    async def snapshot() -> int:
        return next(snaps)

    async def main():
        return await closed_loop(
            [counter.send] * 4, 0.05, 0.4, 1.0, snapshot, (OSError,), LoopClock()
        )

    stats, before, after = asyncio.run(main())
    assert (before, after) == (0, 1)
    assert counter.peak == 4
    # 4 clients × 20 ms per request → at most 200 req/s; a busy box only makes it slower
    assert 50 <= stats.throughput_rps <= 210
    assert stats.failed == 0
    assert stats.p50_s == pytest.approx(0.02, rel=0.5)


def test_failures_count_and_time_out() -> None:
    calls = itertools.count()

    async def flaky() -> None:
        if next(calls) % 2:
            raise OSError("connection reset")
        await asyncio.sleep(10)  # longer than the timeout

    async def snapshot() -> str:
        return "metrics unreachable"

    async def main():
        return await closed_loop([flaky], 0.0, 0.5, 0.05, snapshot, (OSError, TimeoutError))

    stats, before, _ = asyncio.run(main())
    assert stats.ok == 0 and stats.failed >= 2
    assert before == "metrics unreachable"


def test_sequential_sends_one_at_a_time() -> None:
    counter = InFlight(0.001)

    async def snapshot() -> None:
        return None

    stats, _, _ = asyncio.run(sequential(counter.send, 7, 1.0, snapshot, (OSError,)))
    assert stats.ok == 7 and counter.peak == 1
