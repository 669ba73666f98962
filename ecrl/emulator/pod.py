"""One emulated Triton pod, run per request in real time on an asyncio loop.

The twin (``ecrl.twin.service``) computes a pod's behaviour per step from queueing formulas;
here the same pod model runs as a discrete-event emulation so that latency, queueing, batch
sizes and failures emerge from real waits a real client measures:

1. **CPU stage** — protocol decode and pre/post-processing, ``profile.server.cpu_s_per_request``
   CPU-seconds per request on ``ceil(cpu_limit - cpu_idle)`` workers, each slowed to share the
   quota (the pod's CPU limit throttles it as CFS would).
2. **Dynamic batcher** — Triton's ``dynamic_batching``: requests queue; an idle instance takes
   up to ``max_batch_size`` of them, waiting up to ``max_queue_delay`` for more; the queue
   rejects beyond ``max_queue_size`` and drops requests older than the timeout.
3. **Instances** — ``instance_group.count`` executors; a batch of b runs for the profile's
   measured ``exec_s(b)`` divided by the card's speed, stretched by time-slicing with the other
   contexts on the same GPU, plus ``host_s_per_batch``.

``time_scale`` multiplies every service time, so a small machine can drive a pod to
saturation with the request rates Locust reaches there (documented, never hidden: every metric
is labelled ``emulated="true"``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from ecrl.twin.profile import Profile


class InferError(Exception):
    """A request the pod refused or dropped; ``reason`` follows Triton's failure reasons."""

    def __init__(self, message: str, reason: str, unavailable: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.unavailable = unavailable


@dataclass(frozen=True)
class TritonConfig:
    """The model-config fields the controller changes (Triton model configuration names)."""

    max_batch_size: int = 8
    max_queue_delay_us: int = 0
    instance_count: int = 1
    max_queue_size: int = 512
    timeout_s: float = 10.0

    def validate(self) -> None:
        if not 1 <= self.max_batch_size <= 1024:
            raise ValueError("max_batch_size: must be within [1, 1024]")
        if not 0 <= self.max_queue_delay_us <= 10_000_000:
            raise ValueError("dynamic_batching.max_queue_delay_microseconds: must be in [0, 1e7]")
        if not 1 <= self.instance_count <= 16:
            raise ValueError("instance_group[0].count: must be within [1, 16]")
        if not 1 <= self.max_queue_size <= 1_000_000:
            raise ValueError("default_queue_policy.max_queue_size: must be in [1, 1e6]")

    def as_model_config(self, name: str, input_name: str, output_name: str) -> dict:
        """The Triton model configuration (JSON form, as ``/v2/models/<m>/config`` returns)."""
        return {
            "name": name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "max_batch_size": self.max_batch_size,
            "input": [{"name": input_name, "data_type": "TYPE_FP32", "dims": [3, 224, 224]}],
            "output": [{"name": output_name, "data_type": "TYPE_FP32", "dims": [1000]}],
            "instance_group": [{"count": self.instance_count, "kind": "KIND_GPU"}],
            "dynamic_batching": {
                "max_queue_delay_microseconds": self.max_queue_delay_us,
                "default_queue_policy": {"max_queue_size": self.max_queue_size},
            },
        }

    def merged(self, model_config: dict) -> TritonConfig:
        """This config updated from a Triton model-config JSON (load-with-config); validated."""
        if not isinstance(model_config, dict):
            raise ValueError("config: must be a JSON object (Triton model configuration)")
        out = self
        if "max_batch_size" in model_config:
            out = replace(
                out, max_batch_size=_int(model_config["max_batch_size"], "max_batch_size")
            )
        db = model_config.get("dynamic_batching")
        if db is not None:
            if not isinstance(db, dict):
                raise ValueError("dynamic_batching: must be an object")
            if "max_queue_delay_microseconds" in db:
                delay = _int(
                    db["max_queue_delay_microseconds"],
                    "dynamic_batching.max_queue_delay_microseconds",
                )
                out = replace(out, max_queue_delay_us=delay)
            policy = db.get("default_queue_policy") or {}
            if "max_queue_size" in policy:
                size = _int(policy["max_queue_size"], "default_queue_policy.max_queue_size")
                out = replace(out, max_queue_size=size)
        groups = model_config.get("instance_group")
        if groups is not None:
            if not isinstance(groups, list) or not groups or not isinstance(groups[0], dict):
                raise ValueError("instance_group: must be a non-empty list of objects")
            count = sum(_int(g.get("count", 1), "instance_group[].count") for g in groups)
            out = replace(out, instance_count=count)
        out.validate()
        return out


def _int(value: object, field: str) -> int:
    # Triton's JSON model config writes 64-bit integers as strings; accept both.
    try:
        if isinstance(value, bool):
            raise TypeError
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"{field}: must be an integer, got {value!r}") from None
    if str(value).strip() != str(number) and not isinstance(value, int):
        raise ValueError(f"{field}: must be an integer, got {value!r}")
    return number


@dataclass
class Gpu:
    """One physical GPU shared by time-slicing among the pods placed on it."""

    node: str
    index: int
    uuid: str
    product: str
    vram_bytes: int
    speed: float = 1.0
    background_util: float = 0.0
    temp_c: float = 35.0

    def __post_init__(self) -> None:
        self.pods: list[EmulatedPod] = []

    def util(self) -> float:
        return min(1.0, sum(p.gpu_busy_ratio for p in self.pods) + self.background_util)

    def slowdown(self, pod: EmulatedPod, overhead: float) -> float:
        """The twin's time-slicing stretch: others' busy share, plus a loss per busy context."""
        others = sum(p.gpu_busy_ratio for p in self.pods if p is not pod) + self.background_util
        busy_ctx = sum(1 for p in self.pods if p.gpu_busy_ratio > 0.01 or p is pod)
        switch = 1.0 + overhead * max(busy_ctx - 1, 0)
        return switch / (1.0 - min(others, 0.95))

    def vram_used(self, profile: Profile) -> int:
        return int(
            sum(
                profile.vram_per_replica_bytes(p.config.instance_count, p.config.max_batch_size)
                for p in self.pods
            )
        )


@dataclass
class _Pending:
    future: asyncio.Future
    enqueued: float
    images: int


@dataclass(frozen=True)
class InferTiming:
    """Server-side times of one request, as Triton accounts them (seconds)."""

    queue_s: float
    compute_s: float
    total_s: float
    batch: int


SUMMARY_MAX_AGE_S = 60.0
"""Sliding window of Triton's latency summaries (prometheus-cpp's default Summary max_age)."""
WINDOW_S = 5.0
"""Usage (CPU cores, GPU busy share) is averaged over this sliding window."""


class EmulatedPod:
    """One Triton server pod: CPU stage, dynamic batcher, instances, counters."""

    def __init__(
        self,
        name: str,
        namespace: str,
        node: str,
        gpu: Gpu,
        profile: Profile,
        config: TritonConfig,
        cpu_limit_cores: float,
        memory_limit_bytes: int,
        time_scale: float = 1.0,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.node = node
        self.gpu = gpu
        self.profile = profile
        self.config = config
        self.cpu_limit_cores = cpu_limit_cores
        self.memory_limit_bytes = memory_limit_bytes
        self.time_scale = time_scale
        self.started = time.monotonic()
        self._queue: deque[_Pending] = deque()
        self._queue_signal = asyncio.Event()
        self._cpu = _CpuStage(self)
        self._workers: list[asyncio.Task] = []
        self._closed = False
        self.inflight = 0
        # Triton's cumulative counters (nv_inference_*), durations in microseconds
        self.success = 0
        self.failure: dict[str, int] = {}
        self.inference_count = 0
        self.exec_count = 0
        self.request_us = 0.0
        self.queue_us = 0.0
        self.compute_input_us = 0.0
        self.compute_infer_us = 0.0
        self.compute_output_us = 0.0
        self.cpu_seconds = 0.0
        self.gpu_seconds = 0.0
        self._latencies: deque[tuple[float, float]] = deque()
        """(completion time, request µs) of successes within :data:`SUMMARY_MAX_AGE_S`."""
        self._usage: deque[tuple[float, float, float]] = deque()
        self.cpu_usage_cores = profile.server.cpu_idle_cores
        self.gpu_busy_ratio = 0.0

    # -- configuration -----------------------------------------------------------------
    def _start_workers(self) -> None:
        """One task per model instance; started with the first request (needs a running loop)."""
        for _ in range(self.config.instance_count):
            self._workers.append(asyncio.create_task(self._instance()))

    def apply(self, config: TritonConfig) -> None:
        """Swap to a new model config (after the reload delay, which the caller waits for)."""
        old = self.config
        self.config = config
        if self._workers and config.instance_count != old.instance_count:
            for t in self._workers:
                t.cancel()
            self._workers.clear()
            self._start_workers()
        self._queue_signal.set()

    def set_cpu_limit(self, cores: float) -> None:
        """In-place resize of the CPU limit (Kubernetes 1.33 pod resize)."""
        self.cpu_limit_cores = cores
        self._cpu.resize()

    async def close(self) -> None:
        """Stop serving: queued requests fail as Triton's do when the server shuts down."""
        self._closed = True
        for t in self._workers:
            t.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(InferError("Server is shutting down", "OTHER"))

    # -- serving -----------------------------------------------------------------------
    async def infer(self, images: int = 1) -> InferTiming:
        """Serve one request of ``images`` images; raises :class:`InferError` on refusal."""
        if self._closed:
            raise InferError("Server is not ready", "OTHER")
        if images > self.config.max_batch_size:
            raise InferError(
                f"inference request batch-size must be <= {self.config.max_batch_size} for "
                f"'{self.profile.model.name}'",
                "REJECTED",
                unavailable=False,
            )
        if not self._workers:
            self._start_workers()
        t0 = time.monotonic()
        self.inflight += 1
        try:
            await self._cpu.run(self.profile.server.cpu_s_per_request * self.time_scale)
            if len(self._queue) >= self.config.max_queue_size:
                self._fail("REJECTED")
                raise InferError("Exceeds maximum queue size", "REJECTED")
            fut: asyncio.Future = asyncio.get_running_loop().create_future()
            enq = time.monotonic()
            self._queue.append(_Pending(fut, enq, images))
            self._queue_signal.set()
            queue_s, compute_s, batch = await fut
            total = time.monotonic() - t0
            self.success += 1
            self.inference_count += images
            self.request_us += total * 1e6
            self._latencies.append((t0 + total, total * 1e6))
            self.queue_us += queue_s * 1e6
            self.compute_infer_us += compute_s * 1e6
            return InferTiming(queue_s, compute_s, total, batch)
        finally:
            self.inflight -= 1

    def _fail(self, reason: str) -> None:
        self.failure[reason] = self.failure.get(reason, 0) + 1

    async def _instance(self) -> None:
        """One model instance: take a batch from the queue, execute it, answer it."""
        while True:
            batch = await self._take_batch()
            if not batch:
                continue
            images = sum(p.images for p in batch)
            s = self.profile.server
            exec_s = float(self.profile.compute.exec_time_s(images)) / self.gpu.speed
            slow = self.gpu.slowdown(self, self.profile.gpu.timeslice_overhead_ratio)
            run_s = (exec_s * slow + s.host_s_per_batch) * self.time_scale
            start = time.monotonic()
            await asyncio.sleep(run_s)
            self.exec_count += 1
            self.gpu_seconds += exec_s * self.time_scale
            for p in batch:
                if not p.future.done():
                    p.future.set_result((start - p.enqueued, run_s, images))

    async def _take_batch(self) -> list[_Pending]:
        while not self._queue:
            self._queue_signal.clear()
            await self._queue_signal.wait()
        cfg = self.config
        delay_s = cfg.max_queue_delay_us / 1e6 * self.time_scale
        if delay_s > 0 and self._queued_images() < cfg.max_batch_size:
            deadline = self._queue[0].enqueued + delay_s
            while self._queued_images() < cfg.max_batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._queue_signal.clear()
                try:
                    await asyncio.wait_for(self._queue_signal.wait(), left)
                except TimeoutError:
                    break
        batch: list[_Pending] = []
        images = 0
        now = time.monotonic()
        while self._queue and images + self._queue[0].images <= cfg.max_batch_size:
            p = self._queue.popleft()
            if now - p.enqueued > cfg.timeout_s:
                self._fail("TIMEOUT")
                if not p.future.done():
                    p.future.set_exception(InferError("Request timeout expired", "TIMEOUT"))
                continue
            batch.append(p)
            images += p.images
        if not batch and self._queue and self._queue[0].images > cfg.max_batch_size:
            # Queued before a reload shrank max_batch_size: it can never be batched now.
            p = self._queue.popleft()
            self._fail("REJECTED")
            if not p.future.done():
                p.future.set_exception(
                    InferError("batch-size exceeds the reloaded max_batch_size", "REJECTED")
                )
        return batch

    def _queued_images(self) -> int:
        return sum(p.images for p in self._queue)

    @property
    def pending(self) -> int:
        """Requests waiting in the scheduler queue (``nv_inference_pending_request_count``)."""
        return len(self._queue)

    def latency_quantiles_us(self, quantiles: tuple[float, ...]) -> list[float]:
        """Request-duration quantiles over the last :data:`SUMMARY_MAX_AGE_S` (NaN if none)."""
        horizon = time.monotonic() - SUMMARY_MAX_AGE_S
        while self._latencies and self._latencies[0][0] < horizon:
            self._latencies.popleft()
        if not self._latencies:
            return [math.nan] * len(quantiles)
        values = np.fromiter((v for _, v in self._latencies), float, len(self._latencies))
        return [float(q) for q in np.quantile(values, quantiles)]

    def memory_used_bytes(self) -> int:
        s = self.profile.server
        return int(
            s.memory_base_bytes
            + self.config.instance_count * s.memory_per_instance_bytes
            + self.inflight * s.memory_per_inflight_bytes
        )

    def sample_usage(self, now: float | None = None) -> None:
        """Update the windowed CPU cores and GPU busy share (called about once a second)."""
        now = time.monotonic() if now is None else now
        self._usage.append((now, self.cpu_seconds, self.gpu_seconds))
        while len(self._usage) > 2 and now - self._usage[1][0] >= WINDOW_S:
            self._usage.popleft()
        t0, cpu0, gpu0 = self._usage[0]
        span = now - t0
        if span > 0:
            self.cpu_usage_cores = min(
                self.profile.server.cpu_idle_cores + (self.cpu_seconds - cpu0) / span,
                self.cpu_limit_cores,
            )
            self.gpu_busy_ratio = min(1.0, (self.gpu_seconds - gpu0) / span)


class _CpuStage:
    """Processor sharing of the pod's CPU quota among the requests in their CPU stage.

    Triton's HTTP/gRPC front-ends decode in thread pools larger than the CPU quota, and CFS
    shares the quota among runnable threads: with n requests in the stage each progresses at
    ``min(1, free_cores / n)`` core. This is the twin's processor-shared CPU stage, emulated
    exactly (event-driven: one timer for the next completion, re-planned on every change).
    """

    def __init__(self, pod: EmulatedPod) -> None:
        self.pod = pod
        self.jobs: dict[int, list] = {}
        self.last = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._ids = 0
        self.resize()

    def resize(self) -> None:
        self._advance(time.monotonic())
        self.cores = max(self.pod.cpu_limit_cores - self.pod.profile.server.cpu_idle_cores, 0.05)
        if self.jobs:
            self._plan()

    def _rate(self) -> float:
        return min(1.0, self.cores / max(len(self.jobs), 1))

    def _advance(self, now: float) -> None:
        if self.jobs:
            done = self._rate() * (now - self.last)
            for job in self.jobs.values():
                job[0] -= done
        self.last = now

    def _plan(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.jobs:
            left = min(job[0] for job in self.jobs.values())
            delay = max(left, 0.0) / self._rate()
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._advance(time.monotonic())
        for key in [k for k, job in self.jobs.items() if job[0] <= 1e-9]:
            fut = self.jobs.pop(key)[1]
            if not fut.done():
                fut.set_result(None)
        self._plan()

    async def run(self, cpu_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._advance(time.monotonic())
        self._ids += 1
        key = self._ids
        fut = loop.create_future()
        self.jobs[key] = [cpu_seconds, fut]
        self._plan()
        try:
            await fut
        finally:
            if self.jobs.pop(key, None) is not None:  # cancelled mid-way: others speed up
                self._advance(time.monotonic())
                self._plan()
        self.pod.cpu_seconds += cpu_seconds
