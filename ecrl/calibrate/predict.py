"""The twin's prediction of a calibration point: N closed-loop clients on one Triton pod.

Uses the twin's own pod model (``ecrl.twin.service.pod_step``, the same one its step and the
oracle use) at the point's settings, with no think time, as the sweep drives the server:

- below saturation, the throughput X solves Little's law ``X · R(X) = N`` (bisection),
  where R(X) is the pod model's mean latency at a steady rate X;
- when even the pod's capacity X_sat (full batches: demand never runs out) cannot hold N
  clients (``X_sat · R(X_sat) < N``), the throughput is X_sat and the extra clients wait in
  a FIFO backlog of ``w = N / X_sat − R`` seconds: the twin's fluid queue, which shifts its
  latency distribution by ``w``. At most N / instances requests can be in one instance's
  batch, so batches are capped by that too.

p95 comes from the pod model's latency CDF (``PodStep.cdf``), as the twin computes it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ecrl.twin.profile import Profile
from ecrl.twin.queueing import mixture_quantile
from ecrl.twin.service import PodStep, pod_step

BISECTIONS = 60


@dataclass(frozen=True)
class Prediction:
    """The twin's steady operating point for one calibration setting (seconds, req/s)."""

    throughput_rps: float
    latency_mean_s: float
    p95_s: float
    batch: float
    compute_s: float
    """Batch cycle charged to each request (Triton's compute time per request)."""
    queue_s: float
    capacity_rps: float
    saturated: bool


def _step(
    profile: Profile,
    rate_rps: float,
    max_batch: float,
    instances: int,
    delay_s: float,
    cpu_limit_cores: float,
) -> PodStep:
    one = np.ones(1)
    slowdown = 1.0 / (1.0 - profile.gpu.background_util_ratio)  # alone on its GPU
    return pod_step(
        profile,
        arrivals=one * rate_rps,
        queue=one * 0.0,
        instances=one * instances,
        max_batch=one * max_batch,
        delay_s=one * delay_s,
        cpu_limit_cores=one * cpu_limit_cores,
        gpu_slowdown=one * slowdown,
        gpu_speed=one,
        dt_s=1.0,
        timeout_s=math.inf,
        max_queue_size=math.inf,
        mean_rate_rps=one * rate_rps,
    )


def _bisect(f, lo: float, hi: float) -> float:
    """The x in [lo, hi] where the increasing ``f`` crosses 0 (f(lo) < 0 <= f(hi))."""
    for _ in range(BISECTIONS):
        mid = 0.5 * (lo + hi)
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _p95(ps: PodStep, shift_s: float = 0.0) -> float:
    shifted = dataclasses.replace(ps, w0_s=ps.w0_s + shift_s, w1_s=ps.w1_s + shift_s)
    lo = shifted.base_s.copy()
    hi = shifted.base_s + 25.0 * (shifted.jitter_s + shifted.wait_mean_s) + shifted.w1_s + 1.0
    weights = np.ones((1, 1))
    q = mixture_quantile(0.95, weights, lo, hi, lambda m: shifted.cdf(m[..., 0])[..., None])
    return float(q[0])


def closed_loop(
    profile: Profile,
    clients: int,
    max_batch: int,
    instances: int,
    cpu_limit_cores: float,
    delay_s: float = 0.0,
) -> Prediction:
    """The twin's throughput, mean and p95 latency for ``clients`` closed-loop clients."""
    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    # N clients can put at most N / instances requests into one instance's batch
    batch_cap = min(float(max_batch), max(1.0, clients / instances))

    def step(rate: float) -> PodStep:
        return _step(profile, rate, batch_cap, instances, delay_s, cpu_limit_cores)

    # Capacity: the most the pod serves when demand never runs out (full batches). Below it
    # the twin's batches grow with the rate (b = rate · cycle(b)), so capacity(X) = X all the
    # way up: the first crossing of X = capacity(X) is not the limit, this is.
    x_sat = float(step(1e9).capacity_rps[0])

    def held(x: float) -> float:
        return x * float(step(x).latency_mean_s[0]) - clients

    edge = x_sat * (1.0 - 1e-6)
    saturated = held(edge) < 0
    x = edge if saturated else _bisect(held, 0.0, edge)
    ps = step(x)
    wait = clients / x - float(ps.latency_mean_s[0]) if saturated else 0.0
    return Prediction(
        throughput_rps=x,
        latency_mean_s=float(ps.latency_mean_s[0]) + wait,
        p95_s=_p95(ps, wait),
        batch=float(ps.batch[0]),
        compute_s=float(ps.compute_s[0]),
        queue_s=float(ps.queue_wait_mean_s[0]) + wait,
        capacity_rps=x_sat,
        saturated=saturated,
    )
