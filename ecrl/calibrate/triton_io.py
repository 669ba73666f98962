"""Talking to a live Triton for calibration: metrics, model control, closed-loop load.

Thin adapters over the real clients, so the sweep (``ecrl.calibrate.sweep``) stays plain
logic: Triton's ``/metrics`` text parsed with ``prometheus_client``'s parser; the KServe-v2
model-repository API (``POST /v2/repository/models/<m>/load`` with ``parameters.config`` —
load-with-config) through ``tritonclient.http.aio``; inference through ``tritonclient``'s
asyncio HTTP (binary tensor extension) or gRPC client, one prebuilt single-image input per
sample photograph, as the Locust users send them (``loadtest/locustfile.py``).

The load is closed-loop like Triton's ``perf_analyzer --concurrency-range``: ``concurrency``
clients each send their next request as soon as the last one answers (no think time).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from ecrl import serving
from ecrl.calibrate.points import ClientStats, ServerCounters
from ecrl.errors import Temporary

COUNTERS = {
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_count": "inference_count",
    "nv_inference_exec_count": "exec_count",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
}
"""Triton's per-model counters (docs: user_guide/metrics.md, "Inference Request Metrics")."""
ERROR_BACKOFF_S = 0.05
"""A client whose request failed waits this long before the next, so a refusing server is
not hammered in a tight loop (the failure still counts)."""


def parse_triton_metrics(text: str, model: str) -> tuple[ServerCounters | None, bool]:
    """Sum ``model``'s counters over versions (and pods); also whether any series is emulated.

    Returns (None, emulated) when the page has no ``nv_inference_request_success`` for the
    model (a page without Triton's counters is not read as zeros).
    """
    totals = dict.fromkeys(COUNTERS.values(), 0.0)
    seen = False
    emulated = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            emulated = emulated or sample.labels.get("emulated") == "true"
            name = sample.name.removesuffix("_total")
            if name not in COUNTERS or sample.labels.get("model") != model:
                continue
            seen = seen or name == "nv_inference_request_success"
            totals[COUNTERS[name]] += float(sample.value)
    return (ServerCounters(**totals) if seen else None), emulated


def scrape(urls: Sequence[str], model: str, timeout_s: float = 5.0) -> ServerCounters:
    """Scrape and sum every metrics page; raises :class:`Temporary` if one fails."""
    parts = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                text = resp.read().decode()
        except OSError as exc:
            raise Temporary(f"metrics {url}: {exc}") from None
        counters, _ = parse_triton_metrics(text, model)
        if counters is None:
            raise Temporary(f"metrics {url}: no nv_inference_request_success for '{model}'")
        parts.append(counters)
    total = parts[0]
    for p in parts[1:]:
        total = ServerCounters(**{k: getattr(total, k) + getattr(p, k) for k in COUNTERS.values()})
    return total


def metrics_emulated(urls: Sequence[str], timeout_s: float = 5.0) -> bool | None:
    """Whether any metrics page labels its series ``emulated="true"`` (None: unreadable)."""
    try:
        for url in urls:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                if parse_triton_metrics(resp.read().decode(), "")[1]:
                    return True
    except OSError:
        return None
    return False


def host_port(url: str) -> str:
    """``http://h:p/`` → ``h:p`` as tritonclient wants it (https is refused: plain only)."""
    scheme, sep, rest = url.strip().partition("://")
    if sep and scheme != "http":
        raise ValueError(f"scheme must be http, got {url!r}")
    return (rest if sep else scheme).rstrip("/")


class TritonTarget:
    """One Triton server: model control and metadata over HTTP, inference over HTTP or gRPC."""

    def __init__(self, url: str, grpc_url: str | None, model: str, timeout_s: float) -> None:
        import tritonclient.http.aio as http_aio

        self.model = model
        self.timeout_s = timeout_s
        self._http_mod = http_aio
        self.http = http_aio.InferenceServerClient(host_port(url), conn_limit=1100)
        self.grpc: Any = None
        if grpc_url:
            import tritonclient.grpc.aio as grpc_aio

            self.grpc = grpc_aio.InferenceServerClient(host_port(grpc_url))
        self.protocol = "grpc" if self.grpc is not None else "http"
        self._inputs: dict[int, list[Any]] = {}

    def _module(self) -> Any:
        if self.grpc is not None:
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
        return mod

    def _prebuilt_inputs(self, images: int) -> list[Any]:
        """Inputs of ``images`` real photographs each, built once and shared read-only.

        One request per sample photograph for single images (as the Locust users send);
        for the batch-time probe, a few batches drawn from the samples.
        """
        if images not in self._inputs:
            from ecrl.load import images as samples

            mod = self._module()
            if images == 1:
                arrays = [img[None] for img in samples.load_samples()]
            else:
                rng = np.random.default_rng(images)
                arrays = [samples.sample_batch(images, rng) for _ in range(3)]
            built = []
            for x in arrays:
                tensor = mod.InferInput(serving.INPUT_NAME, list(x.shape), serving.DATATYPE)
                if self.grpc is None:
                    tensor.set_data_from_numpy(x, binary_data=True)
                else:
                    tensor.set_data_from_numpy(x)
                built.append(tensor)
            self._inputs[images] = built
        return self._inputs[images]

    async def server_metadata(self) -> dict:
        return dict(await self.http.get_server_metadata())

    async def load(self, config: dict) -> float:
        """Load-with-config; returns the seconds the call took (Triton answers once loaded)."""
        start = time.monotonic()
        await asyncio.wait_for(
            self.http.load_model(self.model, config=json.dumps(config)), self.timeout_s
        )
        return time.monotonic() - start

    async def model_config(self) -> dict:
        return dict(await self.http.get_model_config(self.model))

    def sender(self, seed: int, images: int = 1) -> Callable[[], Awaitable[None]]:
        """An ``async send()`` for one client: real photographs in, checked logits out."""
        rng = np.random.default_rng(seed)
        client = self.grpc if self.grpc is not None else self.http
        inputs = self._prebuilt_inputs(images)
        mod = self._module()
        binary = {"binary_data": True} if self.grpc is None else {}
        outputs = [mod.InferRequestedOutput(serving.OUTPUT_NAME, **binary)]
        want = (images, serving.NUM_CLASSES)

        async def send() -> None:
            tensor = inputs[int(rng.integers(len(inputs)))]
            result = await client.infer(self.model, [tensor], outputs=outputs)
            logits = result.as_numpy(serving.OUTPUT_NAME)
            if logits is None or logits.shape != want:
                got = None if logits is None else list(logits.shape)
                raise BadResponse(f"{serving.OUTPUT_NAME}: expected {list(want)}, got {got}")

        return send

    async def close(self) -> None:
        await self.http.close()
        if self.grpc is not None:
            await self.grpc.close()


class BadResponse(Exception):
    """The server answered, but not with [1, 1000] logits."""


def request_errors() -> tuple[type[BaseException], ...]:
    """What a failed request raises: Triton's exception, transport errors, timeouts."""
    import aiohttp
    from tritonclient.utils import InferenceServerException

    return (InferenceServerException, aiohttp.ClientError, OSError, TimeoutError, BadResponse)


Record = tuple[float, float, bool, str | None]
"""(completed at, latency, succeeded, first line of the error) of one request."""


def summarize(records: Sequence[Record], w0: float, w1: float) -> ClientStats:
    """Client figures over the requests that completed inside [w0, w1].

    ``records`` are (completion time, latency s, ok, error text); latency quantiles are over
    the successful ones (NaN when none succeeded).
    """
    inside = [r for r in records if w0 <= r[0] <= w1]
    lat = np.array([r[1] for r in inside if r[2]], dtype=float)
    errors = [r[3] for r in inside if not r[2]]
    window = max(w1 - w0, 1e-9)
    q = np.quantile(lat, (0.5, 0.95, 0.99)) if lat.size else np.full(3, np.nan)
    return ClientStats(
        ok=int(lat.size),
        failed=len(errors),
        window_s=window,
        throughput_rps=lat.size / window,
        latency_mean_s=float(lat.mean()) if lat.size else float("nan"),
        p50_s=float(q[0]),
        p95_s=float(q[1]),
        p99_s=float(q[2]),
        first_error=errors[0] if errors else None,
    )


async def _timed_send(
    send: Callable[[], Awaitable[None]],
    timeout_s: float,
    errors: tuple[type[BaseException], ...],
    clock: Callable[[], float],
    records: list[Record],
) -> bool:
    """One request, timed and appended to ``records``; False when it failed."""
    start = clock()
    try:
        await asyncio.wait_for(send(), timeout_s)
    except errors as exc:
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        records.append((clock(), clock() - start, False, text))
        return False
    done = clock()
    records.append((done, done - start, True, None))
    return True


async def closed_loop(
    senders: Sequence[Callable[[], Awaitable[None]]],
    warmup_s: float,
    duration_s: float,
    timeout_s: float,
    snapshot: Callable[[], Awaitable[Any]],
    errors: tuple[type[BaseException], ...],
    clock: Callable[[], float] = time.monotonic,
) -> tuple[ClientStats, Any, Any]:
    """Run one client per sender for warm-up + window; snapshot the server around the window.

    Returns the client figures of the window and the two snapshots (before, after). Clients
    stop sending after the window and finish their request in flight (up to ``timeout_s``).
    """
    records: list[Record] = []
    stop = asyncio.Event()

    async def client(send: Callable[[], Awaitable[None]]) -> None:
        while not stop.is_set():
            if not await _timed_send(send, timeout_s, errors, clock, records):
                await asyncio.sleep(ERROR_BACKOFF_S)

    tasks = [asyncio.create_task(client(s)) for s in senders]
    try:
        await asyncio.sleep(warmup_s)
        before = await snapshot()
        w0 = clock()
        await asyncio.sleep(duration_s)
        w1 = clock()
        after = await snapshot()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return summarize(records, w0, w1), before, after


async def sequential(
    send: Callable[[], Awaitable[None]],
    count: int,
    timeout_s: float,
    snapshot: Callable[[], Awaitable[Any]],
    errors: tuple[type[BaseException], ...],
    clock: Callable[[], float] = time.monotonic,
) -> tuple[ClientStats, Any, Any]:
    """``count`` requests one after another (concurrency 1), snapshots before and after.

    With one request in the server at a time, Triton executes each request alone, so its
    counters give the exact execution time of a batch of that request's size.
    """
    records: list[Record] = []
    before = await snapshot()
    w0 = clock()
    for _ in range(count):
        await _timed_send(send, timeout_s, errors, clock, records)
    w1 = clock()
    after = await snapshot()
    return summarize(records, w0, w1), before, after
