"""One pod serving for one step: capacity, batching, backlog, failures and latency.

A pure function of plain arrays (any shape, usually [envs, pods]) shared by the twin's
step and the oracle's look-ahead, so both use exactly the same model of a pod.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecrl.twin.profile import Profile
from ecrl.twin.queueing import batch_size, latency_cdf, sakasegawa_wait, wait_probability

CPU_SCV = 1.0
"""(ca² + cs²)/2 for the CPU stage: Poisson arrivals, exponential-like sharing of the quota."""
GPU_SCV = 0.5
"""(ca² + cs²)/2 for the batch executor: Poisson arrivals, near-deterministic batch times."""


@dataclass(frozen=True, slots=True)
class PodStep:
    """Per-pod results of one step (arrays broadcast to the input shape)."""

    served: np.ndarray
    failed: np.ndarray
    queue_end: np.ndarray
    batch: np.ndarray
    exec_count: np.ndarray
    gpu_busy_ratio: np.ndarray
    cpu_used_cores: np.ndarray
    base_s: np.ndarray
    """No-wait latency: client overhead + CPU work + batch forming + batch cycle."""
    w0_s: np.ndarray
    w1_s: np.ndarray
    """Fluid backlog wait at the start / end of the step (FIFO drain)."""
    jitter_s: np.ndarray
    p_wait: np.ndarray
    wait_mean_s: np.ndarray
    """Mean random wait, conditional on waiting (CPU + executor stages)."""
    queue_wait_mean_s: np.ndarray
    """Mean time in the server's queues (what Triton reports as queue duration)."""
    compute_s: np.ndarray
    """Batch execution time charged to each request (Triton compute_infer duration)."""
    latency_mean_s: np.ndarray
    capacity_rps: np.ndarray

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """Latency CDF of the requests this pod served in the step."""
        return latency_cdf(
            x, self.base_s, self.w0_s, self.w1_s, self.jitter_s, self.p_wait, self.wait_mean_s
        )


def pod_step(
    profile: Profile,
    arrivals: np.ndarray,
    queue: np.ndarray,
    instances: np.ndarray,
    max_batch: np.ndarray,
    delay_s: np.ndarray,
    cpu_limit_cores: np.ndarray,
    gpu_slowdown: np.ndarray,
    gpu_speed: np.ndarray,
    dt_s: float,
    timeout_s: float,
    max_queue_size: float,
    mean_rate_rps: np.ndarray | None = None,
) -> PodStep:
    """Serve ``queue + arrivals`` requests for ``dt_s`` seconds on one pod.

    ``gpu_slowdown`` (≥ 1) stretches batch execution when other contexts share the GPU
    (time-slicing); ``gpu_speed`` scales the profile's execution table to this card.
    Requests that would wait longer than ``timeout_s`` or overflow ``max_queue_size`` fail.

    The stationary waiting-time formulas use ``mean_rate_rps`` (the arrival rate averaged over
    several seconds) when given: second-to-second Poisson noise is already carried by the
    fluid backlog, and feeding it into a formula that assumes a stationary queue would count
    it twice (and overstate waits through Jensen's inequality near ρ → 1).
    """
    s = profile.server
    table = profile.compute
    work = queue + arrivals
    need_rps = work / dt_s
    n = np.maximum(instances, 1.0)

    def cycle(b: np.ndarray) -> np.ndarray:
        return table.exec_time_s(b) / gpu_speed * gpu_slowdown + s.host_s_per_batch

    b = batch_size(need_rps / n, max_batch, delay_s, cycle)
    cyc = cycle(b)
    gpu_cap = n * b / cyc
    cpu_free = np.maximum(cpu_limit_cores - s.cpu_idle_cores, 0.0)
    cpu_cap = cpu_free / max(s.cpu_s_per_request, 1e-9)
    cap_rps = np.minimum(gpu_cap, cpu_cap)
    cap = cap_rps * dt_s
    served = np.minimum(work, cap)
    backlog = work - served
    safe_cap = np.maximum(cap_rps, 1e-9)
    allowed = np.minimum(cap_rps * timeout_s, max_queue_size)
    failed = np.maximum(backlog - allowed, 0.0)
    queue_end = backlog - failed

    rate = served / dt_s
    steady_rate = rate if mean_rate_rps is None else np.minimum(mean_rate_rps, cap_rps)
    rho_cpu = np.where(cpu_cap > 0, steady_rate / np.maximum(cpu_cap, 1e-9), 0.0)
    rho_gpu = steady_rate / np.maximum(gpu_cap, 1e-9)
    cores = np.maximum(np.floor(cpu_limit_cores), 1.0)
    w_cpu = sakasegawa_wait(rho_cpu, cores, np.full_like(rho_cpu, s.cpu_s_per_request), CPU_SCV)
    w_gpu = sakasegawa_wait(rho_gpu, n, cyc, GPU_SCV)
    # The CPU stage is processor-shared (Triton's HTTP/gRPC frontends decode in thread pools
    # larger than the CPU quota): contention stretches every request's decode by the mean
    # wait instead of making a few requests queue. The batch executor is FCFS: with
    # probability pw a request finds the instances busy and waits (exponential tail).
    pw = wait_probability(rho_gpu, n)
    wait_mean = np.where(pw > 1e-9, w_gpu / np.maximum(pw, 1e-9), 0.0)
    # Batch forming: with spare capacity, a request waits for the delay window (or until the
    # batch fills); once the queue is saturated, batches are full and nobody waits to form.
    per_inst = np.maximum(steady_rate / n, 1e-9)
    form = np.where(
        (b < max_batch) & (delay_s > 0), 0.5 * np.minimum(delay_s, (b - 1.0) / per_inst), 0.0
    )
    base = s.client_overhead_s + s.cpu_s_per_request + w_cpu + form + cyc
    w0 = queue / safe_cap
    w1 = queue_end / safe_cap
    jitter = base * s.service_cv
    fluid = 0.5 * (w0 + w1)
    queue_wait = fluid + pw * wait_mean + w_cpu + form
    latency_mean = base + fluid + jitter + pw * wait_mean
    exec_count = served / b
    busy = exec_count * table.exec_time_s(b) / gpu_speed / dt_s
    cpu_used = np.minimum(
        s.cpu_idle_cores + rate * s.cpu_s_per_request, np.maximum(cpu_limit_cores, 0.0)
    )
    return PodStep(
        served=served,
        failed=failed,
        queue_end=queue_end,
        batch=b,
        exec_count=exec_count,
        gpu_busy_ratio=busy,
        cpu_used_cores=cpu_used,
        base_s=base,
        w0_s=w0,
        w1_s=w1,
        jitter_s=jitter,
        p_wait=pw,
        wait_mean_s=wait_mean,
        queue_wait_mean_s=queue_wait,
        compute_s=cyc,
        latency_mean_s=latency_mean,
        capacity_rps=cap_rps,
    )
