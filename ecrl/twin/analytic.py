"""Steady-state predictions from the twin's own pod model (used by the oracle and tests).

Closed-loop users settle where the offered rate and the latency agree:
``rate = users / (think + latency(rate))``. Solved by damped fixed-point iteration with the
exact per-pod step of the twin, so the oracle plans with the same physics it is judged by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecrl.twin.profile import Profile
from ecrl.twin.queueing import mixture_quantile
from ecrl.twin.service import PodStep, pod_step
from ecrl.twin.spec import ClusterSpec


@dataclass(frozen=True, slots=True)
class SteadyState:
    """Predicted operating point (arrays over the candidates evaluated)."""

    offered_rps: np.ndarray
    served_rps: np.ndarray
    latency_mean_s: np.ndarray
    p95_s: np.ndarray
    gpu_busy_ratio: np.ndarray
    stable: np.ndarray
    """True where the pods keep up (no backlog grows, nothing fails)."""


def steady_state(
    profile: Profile,
    cluster: ClusterSpec,
    users: np.ndarray,
    replicas: np.ndarray,
    max_batch: np.ndarray,
    instances: np.ndarray,
    cpu_cores: np.ndarray,
    delay_s: np.ndarray | float = 0.0,
    iterations: int = 40,
) -> SteadyState:
    """Steady state of ``replicas`` identical pods serving ``users`` (arrays broadcast)."""
    users, replicas, max_batch, instances, cpu_cores, delay = np.broadcast_arrays(
        *(
            np.asarray(a, dtype=float)
            for a in (users, replicas, max_batch, instances, cpu_cores, delay_s)
        )
    )
    slots = np.array([g.slots for n in cluster.nodes for g in n.gpus], dtype=float)
    # Pods spread over GPUs (LeastAllocated); the busiest GPU bounds the latency.
    per_gpu = np.ceil(replicas / len(slots))
    bg = profile.gpu.background_util_ratio
    think = cluster.mean_think_s
    d = cluster.deployment
    lat = np.full(users.shape, profile.server.client_overhead_s)
    busy = np.zeros(users.shape)

    def serve(timeout_s: float) -> PodStep:
        return pod_step(
            profile,
            x,
            np.zeros_like(x),
            instances,
            max_batch,
            delay,
            cpu_cores,
            slow,
            1.0,
            1.0,
            timeout_s,
            np.inf,
        )

    for _ in range(iterations):
        rate = users / (think + lat)
        x = rate / np.maximum(replicas, 1.0)
        others = np.clip(bg + busy * (per_gpu - 1.0), 0.0, 0.95)
        k_busy = np.where(busy > 0.01, per_gpu, 1.0)
        slow = (1.0 + profile.gpu.timeslice_overhead_ratio * (k_busy - 1.0)) / (1.0 - others)
        ps = serve(d.request_timeout_s)
        new_lat = np.where(ps.served > 0, ps.latency_mean_s, lat)
        lat = 0.5 * lat + 0.5 * new_lat
        busy = 0.5 * busy + 0.5 * ps.gpu_busy_ratio
    # The operating point without client timeouts: the latency a request would see if it waited.
    ps = serve(np.inf)
    stable = (ps.capacity_rps > x * 1.0001) & (replicas > 0)
    w = np.ones((*x.shape, 1))
    hi = ps.base_s + 25.0 * (ps.jitter_s + ps.wait_mean_s) + ps.w1_s
    p95 = mixture_quantile(0.95, w, ps.base_s.copy(), hi, lambda m: ps.cdf(m[..., 0])[..., None])
    p95 = np.where(stable, p95, np.inf)
    return SteadyState(rate, np.minimum(x, ps.capacity_rps) * replicas, lat, p95, busy, stable)
