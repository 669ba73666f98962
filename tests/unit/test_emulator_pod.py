"""The emulated pod: queueing, batching, limits and model config, in real (short) time."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import statistics
import time

import pytest

from ecrl.emulator.fleet import Fleet, GpuNodeSpec, PodSpec
from ecrl.emulator.pod import InferError, TritonConfig
from ecrl.twin.profile import builtin_profile_path, load_profile

PROFILE = load_profile(builtin_profile_path("rtx3080-mobilenetv4"))
FAST_RELOAD = dataclasses.replace(
    PROFILE, server=dataclasses.replace(PROFILE.server, reload_s=0.05)
)


def fleet(time_scale: float = 1.0, cpu: float = 2.0, pods: int = 1, **cfg) -> Fleet:
    f = Fleet(FAST_RELOAD, TritonConfig(**cfg), time_scale=time_scale, seed=0)
    f.set_node(GpuNodeSpec("box"))
    for i in range(pods):
        f.add_pod(PodSpec(f"p{i}", "ns", "box", cpu, 4 << 30))
    return f


async def offered(f: Fleet, rate_rps: float, seconds: float) -> list[float]:
    """Open-loop Poisson-free (evenly spaced) arrivals; returns each request's latency."""
    lat: list[float] = []

    async def one() -> None:
        t0 = time.monotonic()
        await f.route().infer(1)
        lat.append(time.monotonic() - t0)

    tasks = []
    n = round(rate_rps * seconds)
    start = time.monotonic()
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate_rps - time.monotonic()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return lat


def test_latency_rises_when_load_exceeds_capacity() -> None:
    # time_scale 10: CPU stage 0.28 s per request on 2 workers → about 7 req/s per pod.
    async def go() -> tuple[float, float]:
        f = fleet(time_scale=10.0)
        light = await offered(f, 2.0, 2.0)
        heavy = await offered(f, 14.0, 2.0)
        return statistics.mean(light), statistics.mean(heavy)

    light, heavy = asyncio.run(go())
    service = PROFILE.server.cpu_s_per_request * 10 / 0.975  # one worker's share of the quota
    assert light == pytest.approx(service + 0.06 + 0.005, rel=0.35)
    assert heavy > 2.5 * light


def test_cpu_limit_throttles_and_usage_is_reported() -> None:
    async def go() -> tuple[float, float, float]:
        f = fleet(time_scale=10.0, cpu=1.05)  # one core free: a single CPU worker
        pod = f.pods["p0"]
        pod.sample_usage()
        lat = await offered(f, 6.0, 1.5)
        pod.sample_usage()
        return max(lat), pod.cpu_usage_cores, pod.cpu_limit_cores

    worst, used, limit = asyncio.run(go())
    assert worst > 3 * PROFILE.server.cpu_s_per_request * 10  # requests queued for the core
    assert 0.7 * limit < used <= limit


def test_dynamic_batching_forms_batches_under_load() -> None:
    async def go() -> tuple[int, int]:
        f = fleet(time_scale=1.0, cpu=16.0, max_batch_size=8, max_queue_delay_us=20_000)
        await offered(f, 200.0, 0.5)
        pod = f.pods["p0"]
        return pod.exec_count, pod.success

    execs, ok = asyncio.run(go())
    assert ok == 100
    assert execs < ok / 2  # mean batch > 2


def test_full_queue_rejects_like_triton() -> None:
    async def go() -> list[BaseException | object]:
        f = fleet(time_scale=20.0, cpu=16.0, max_queue_size=2, max_batch_size=1)
        pod = f.pods["p0"]
        return await asyncio.gather(*(pod.infer(1) for _ in range(30)), return_exceptions=True)

    results = asyncio.run(go())
    rejected = [r for r in results if isinstance(r, InferError)]
    assert rejected and all(r.reason == "REJECTED" for r in rejected)
    assert str(rejected[0]) == "Exceeds maximum queue size"


def test_load_with_config_swaps_and_refuses_what_does_not_fit_vram() -> None:
    async def go() -> tuple[TritonConfig, str]:
        f = fleet(pods=2)
        new = await f.load({"max_batch_size": 16, "instance_group": [{"count": 2}]})
        err = ""
        try:
            await f.load({"instance_group": [{"count": 8}]})
        except ValueError as exc:
            err = str(exc)
        assert all(p.config == new for p in f.pods.values())
        await f.pods["p0"].infer(1)
        assert len(f.pods["p0"]._workers) == 2
        return new, err

    new, err = asyncio.run(go())
    assert (new.max_batch_size, new.instance_count) == (16, 2)
    assert "CUDA out of memory" in err and "emulated" in err


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": "8x"}, "max_batch_size"),
        ({"instance_group": []}, "instance_group"),
        ({"instance_group": [{"count": True}]}, "instance_group[].count"),
        ({"dynamic_batching": 3}, "dynamic_batching"),
    ],
)
def test_bad_model_config_names_the_field(cfg: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        TritonConfig().merged(cfg)


def test_string_integers_from_triton_json_are_accepted() -> None:
    assert TritonConfig().merged({"max_batch_size": "16"}).max_batch_size == 16


def test_time_slicing_slows_a_pod_when_another_keeps_the_gpu_busy() -> None:
    f_alone = fleet(pods=1)
    f_shared = fleet(pods=2)
    alone = f_alone.pods["p0"]
    a, b = f_shared.pods["p0"], f_shared.pods["p1"]
    b.gpu_busy_ratio = 0.5
    slow_alone = alone.gpu.slowdown(alone, PROFILE.gpu.timeslice_overhead_ratio)
    slow_shared = a.gpu.slowdown(a, PROFILE.gpu.timeslice_overhead_ratio)
    bg = PROFILE.gpu.background_util_ratio  # e.g. the desktop on the reference card
    assert slow_alone == pytest.approx(1.0 / (1.0 - bg))
    ov = PROFILE.gpu.timeslice_overhead_ratio
    assert slow_shared == pytest.approx((1 + ov) / (1.0 - min(0.5 + bg, 0.95)))


def test_no_pod_means_unavailable_not_a_crash() -> None:
    f = Fleet(PROFILE, TritonConfig())
    with pytest.raises(InferError, match="no ready endpoints"):
        f.route()
    assert not f.ready()


def test_cpu_stage_is_processor_shared() -> None:
    """Two requests arriving together on one free core both finish at 2×S (not S and 2S)."""

    async def go() -> list[float]:
        f = fleet(time_scale=10.0, cpu=1.0 + PROFILE.server.cpu_idle_cores)
        stage = f.pods["p0"]._cpu
        work = PROFILE.server.cpu_s_per_request * 10
        t0 = time.monotonic()
        ends: list[float] = []

        async def one() -> None:
            await stage.run(work)
            ends.append(time.monotonic() - t0)

        await asyncio.gather(one(), one())
        return [e / work for e in ends]

    ends = asyncio.run(go())
    assert ends == pytest.approx([2.0, 2.0], abs=0.1)


def test_latency_summary_quantiles_like_tritons_summary() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from ecrl.emulator import exposition

    async def go() -> str:
        f = fleet(time_scale=1.0, cpu=16.0)
        pod = f.pods["p0"]
        before = exposition.triton_pod(pod)
        await asyncio.gather(*(pod.infer(1) for _ in range(20)))
        return before + "\n" + exposition.triton_pod(pod)

    before, _, after = asyncio.run(go()).partition("\n\n")

    def quantiles(text: str) -> dict[str, float]:
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        fam = fams["nv_inference_request_summary_us"]
        return {s.labels.get("quantile", s.name): s.value for s in fam.samples}

    empty = quantiles(before)
    assert all(math.isnan(v) for k, v in empty.items() if k.startswith("0."))  # none yet
    q = quantiles(after)
    assert q["nv_inference_request_summary_us_count"] == 20
    assert 0 < q["0.5"] <= q["0.95"] <= q["0.99"]
    assert q["0.5"] > PROFILE.server.cpu_s_per_request * 1e6  # at least the CPU stage, in µs
