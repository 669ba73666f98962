"""How closely the real-time emulator reproduces the twin's pod model.

Both read the same calibration profile, but the twin computes a pod's mean latency from
queueing formulas while the emulator makes requests actually wait. This offers one emulated
pod Poisson arrivals at fractions of its capacity and compares the measured mean server-side
latency with the twin's ``pod_step`` prediction at the same rate — the ratio says how far
testbed results can be compared with twin results (``make bench`` prints it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np

from ecrl.emulator.fleet import Fleet, GpuNodeSpec, PodSpec
from ecrl.emulator.pod import TritonConfig
from ecrl.twin.profile import Profile
from ecrl.twin.service import pod_step

CPU_LIMIT = 2.0


def scaled(profile: Profile, time_scale: float) -> Profile:
    """The profile with every service time multiplied, as the emulator's ``--time-scale``."""
    s = profile.server
    server = dataclasses.replace(
        s,
        cpu_s_per_request=s.cpu_s_per_request * time_scale,
        host_s_per_batch=s.host_s_per_batch * time_scale,
        client_overhead_s=0.0,  # the emulator is measured server-side
    )
    compute = dataclasses.replace(
        profile.compute, exec_s=tuple(t * time_scale for t in profile.compute.exec_s)
    )
    return dataclasses.replace(profile, server=server, compute=compute)


def capacity_rps(profile: Profile, time_scale: float, config: TritonConfig) -> float:
    p = scaled(profile, time_scale)
    step = _twin(p, 1e6, config)
    return float(step.capacity_rps[0])


def _twin(p: Profile, rate: float, config: TritonConfig):
    one = np.ones(1)
    return pod_step(
        p,
        arrivals=one * rate,
        queue=one * 0.0,
        instances=one * config.instance_count,
        max_batch=one * config.max_batch_size,
        delay_s=one * config.max_queue_delay_us / 1e6,
        cpu_limit_cores=one * CPU_LIMIT,
        gpu_slowdown=one / (1.0 - p.gpu.background_util_ratio),
        gpu_speed=one,
        dt_s=1.0,
        timeout_s=1e9,
        max_queue_size=1e9,
        mean_rate_rps=one * rate,
    )


def twin_latency_s(profile: Profile, time_scale: float, rate: float, config: TritonConfig):
    """The twin's mean server-side latency at a steady ``rate`` (jitter included)."""
    return float(_twin(scaled(profile, time_scale), rate, config).latency_mean_s[0])


async def _measure(profile: Profile, time_scale: float, rate: float, seconds: float, seed: int):
    f = Fleet(profile, TritonConfig(), time_scale=time_scale, seed=seed)
    f.set_node(GpuNodeSpec("bench"))
    pod = f.add_pod(PodSpec("p0", "bench", "bench", CPU_LIMIT, 4 << 30))
    rng = np.random.default_rng(seed)
    lat: list[float] = []

    async def one() -> None:
        t0 = time.monotonic()
        await pod.infer(1)
        lat.append(time.monotonic() - t0)

    tasks = []
    t = 0.0
    start = time.monotonic()
    while t < seconds:
        t += rng.exponential(1.0 / rate)
        await asyncio.sleep(max(0.0, start + t - time.monotonic()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    await pod.close()
    return float(np.mean(lat)), len(lat)


def compare(
    profile: Profile,
    time_scale: float = 4.0,
    loads: tuple[float, ...] = (0.3, 0.6, 0.85),
    seconds: float = 10.0,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Emulator vs twin mean latency at each load (fraction of the pod's capacity)."""
    cfg = TritonConfig()
    cap = capacity_rps(profile, time_scale, cfg)
    rows = []
    for load in loads:
        rate = load * cap
        emu, n = asyncio.run(_measure(profile, time_scale, rate, seconds, seed))
        twin = twin_latency_s(profile, time_scale, rate, cfg)
        rows.append(
            {
                "load": load,
                "rate_rps": rate,
                "requests": n,
                "emulator_ms": emu * 1e3,
                "twin_ms": twin * 1e3,
                "ratio": emu / twin,
            }
        )
    return rows
