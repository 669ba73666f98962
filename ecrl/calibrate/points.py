"""What a Triton calibration sweep measures, as plain data: the grid and one row per setting.

A *point* is one (max_batch_size, instance count, concurrency) setting. It holds what the
client measured (closed-loop throughput and latency quantiles) and the deltas of Triton's own
cumulative counters over the same window (``nv_inference_*`` from the metrics endpoint).
Anything that could not be measured stays ``None`` with the reason in ``missing`` /
``server_missing`` — never a filled-in value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ecrl import serving
from ecrl.errors import ConfigError

FLAGS = {
    "batch_sizes": "--batch",
    "concurrency": "--concurrency",
    "instances": "--instances",
    "max_queue_delay_us": "--max-queue-delay-us",
    "duration_s": "--duration",
    "warmup_s": "--warmup",
    "timeout_s": "--timeout",
    "cpu_limit_cores": "--cpu-limit",
    "probe_requests": "--probe-requests",
}
"""Config field → the ``ecrl calibrate triton`` flag that sets it (errors name the flag)."""
PROBE_MAX_IMAGES = 32
"""Largest request of the batch-time probe (32 × 3×224×224 FP32 = 19 MB)."""


@dataclass(frozen=True)
class SweepConfig:
    """The grid and the timing of one calibration sweep against a live Triton."""

    url: str
    """Triton's HTTP endpoint (``http://HOST:8000``): model control, metadata, inference."""
    metrics_urls: tuple[str, ...]
    """Triton metrics pages, summed (``http://HOST:8002/metrics``; one per pod)."""
    grpc_url: str | None = None
    """``HOST:8001``: send the inference requests over gRPC instead of HTTP."""
    model: str = serving.MODEL_NAME
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    """Triton ``max_batch_size`` values loaded in turn (load-with-config)."""
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    """Closed-loop clients per setting (each sends its next request when the last answers)."""
    instances: tuple[int, ...] = (1, 2)
    """``instance_group[0].count`` values."""
    max_queue_delay_us: int = 0
    """``dynamic_batching.max_queue_delay_microseconds`` for every setting."""
    duration_s: float = 10.0
    """Measurement window per point, after the warm-up."""
    warmup_s: float = 2.0
    """Load before the window opens (queues and batch sizes settle; first requests excluded)."""
    timeout_s: float = 30.0
    """Per request and per model load: longer counts as a failure."""
    cpu_limit_cores: float = 2.0
    """CPU limit of the Triton pod (seeds' baseline: 2 cores); the twin's prediction uses it."""
    probe_requests: int = 10
    """Sequential requests per batch size in the batch-time probe (0: no probe, see sweep)."""
    seed: int = 0
    """Drives which sample image each request sends."""

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first out-of-range setting."""
        for name in ("batch_sizes", "concurrency", "instances"):
            values = getattr(self, name)
            if not values:
                raise ConfigError("command line", FLAGS[name], "needs at least one value")
            if len(set(values)) != len(values) or any(v < 1 for v in values):
                raise ConfigError(
                    "command line", FLAGS[name], f"{list(values)}: distinct integers >= 1"
                )
        limits = {
            "batch_sizes": 1024,  # Triton max_batch_size is an int; the emulator caps it here
            "instances": 16,
            "concurrency": 1024,
        }
        for name, hi in limits.items():
            if max(getattr(self, name)) > hi:
                raise ConfigError("command line", FLAGS[name], f"values must be <= {hi}")
        ranges = {
            "max_queue_delay_us": (0, 10_000_000),
            "duration_s": (0.1, 3600.0),
            "warmup_s": (0.0, 600.0),
            "timeout_s": (0.1, 600.0),
            "cpu_limit_cores": (0.1, 1024.0),
            "probe_requests": (0, 10_000),
        }
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if not (lo <= value <= hi) or not math.isfinite(value):
                raise ConfigError("command line", FLAGS[name], f"{value} is outside [{lo}, {hi}]")

    def settings(self) -> list[tuple[int, int]]:
        """(max_batch_size, instances) in sweep order: each is one model load."""
        return [(b, n) for b in self.batch_sizes for n in self.instances]

    def model_config(self, max_batch: int, instances: int) -> dict:
        """The Triton model-config JSON sent as ``parameters.config`` (load-with-config)."""
        return serving.load_config(max_batch, self.max_queue_delay_us, instances)

    def probe_sizes(self, max_batch: int) -> tuple[int, ...]:
        """Images per request in the batch-time probe of ``max_batch``: 1, 2, 4, … and itself.

        Capped at :data:`PROBE_MAX_IMAGES` (a request body grows by 602 KB per image); the
        fitted line extrapolates beyond, and the sweep's points show how well.
        """
        if self.probe_requests == 0:
            return ()
        top = min(max_batch, PROBE_MAX_IMAGES)
        sizes = {1, top}
        size = 2
        while size < top:
            sizes.add(size)
            size *= 2
        return tuple(sorted(sizes))

    def estimated_s(self, reload_s: float = 2.0, request_s: float = 0.2) -> float:
        """Rough wall time: loads, (warm-up + window) per point, probe requests."""
        per_point = self.warmup_s + self.duration_s
        probes = sum(len(self.probe_sizes(b)) for b in self.batch_sizes) * self.probe_requests
        n_settings = len(self.settings())
        return n_settings * (reload_s + len(self.concurrency) * per_point) + probes * request_s


@dataclass(frozen=True)
class ServerCounters:
    """Triton's cumulative per-model counters (metrics endpoint), or a delta of two scrapes."""

    success: float
    failure: float
    inference_count: float
    exec_count: float
    request_us: float
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float

    def minus(self, earlier: ServerCounters) -> ServerCounters:
        """Counter deltas ``self − earlier`` (both from the same server, later minus earlier)."""
        return ServerCounters(
            **{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)}
        )


@dataclass(frozen=True)
class ClientStats:
    """What the closed-loop client measured over one window (latencies in seconds)."""

    ok: int
    failed: int
    window_s: float
    throughput_rps: float
    latency_mean_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    first_error: str | None = None


@dataclass(frozen=True)
class Point:
    """One (max_batch_size, instances, concurrency) measurement (or one probe batch size)."""

    max_batch: int
    instances: int
    concurrency: int
    images: int = 1
    """Images per request: 1 in the sweep (as Locust users send), b in the batch-time probe."""
    client: ClientStats | None = None
    server: ServerCounters | None = None
    """Counter deltas over the window; None when the metrics could not be read."""
    missing: str | None = None
    """Why nothing was measured (model load failed, no request succeeded, …)."""
    server_missing: str | None = None
    """Why the server-side counters are absent while the client figures exist."""

    @property
    def measured(self) -> bool:
        return self.client is not None and self.missing is None

    def _per_request(self, total: float) -> float | None:
        s = self.server
        if s is None or s.success <= 0:
            return None
        return total / s.success

    @property
    def batch_formed(self) -> float | None:
        """Mean batch Triton executed: inference_count / exec_count over the window."""
        s = self.server
        return None if s is None or s.exec_count <= 0 else s.inference_count / s.exec_count

    @property
    def compute_s(self) -> float | None:
        """Compute-infer time charged per request (Triton charges each its batch's time)."""
        s = self.server
        return None if s is None else self._per_request(s.compute_infer_us / 1e6)

    @property
    def host_s(self) -> float | None:
        """Compute-input + compute-output time per request (copies in and out)."""
        s = self.server
        if s is None:
            return None
        return self._per_request((s.compute_input_us + s.compute_output_us) / 1e6)

    @property
    def queue_s(self) -> float | None:
        s = self.server
        return None if s is None else self._per_request(s.queue_us / 1e6)

    @property
    def server_s(self) -> float | None:
        """Triton's request duration per request (its own timer: receipt to response)."""
        s = self.server
        return None if s is None else self._per_request(s.request_us / 1e6)

    @property
    def other_s(self) -> float | None:
        """Server time outside queue and compute: Triton's per-request CPU work."""
        parts = (self.server_s, self.queue_s, self.compute_s, self.host_s)
        if any(p is None for p in parts):
            return None
        server, queue, compute, host = parts
        return max(server - queue - compute - host, 0.0)  # type: ignore[operator]
