"""Sweep max_batch_size × instance count × concurrency against a live Triton.

For each (max_batch_size, instances) the model is reloaded with that config (Triton's
load-with-config), then each concurrency level runs closed-loop for a warm-up and a window,
with Triton's counters scraped at both ends of the window. A setting whose load fails, or a
point where no request succeeds, is recorded as missing with its reason; nothing is filled in.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from ecrl.calibrate import triton_io
from ecrl.calibrate.points import ClientStats, Point, ServerCounters, SweepConfig
from ecrl.errors import Temporary

log = logging.getLogger("ecrl.calibrate.sweep")


@dataclass(frozen=True)
class Provenance:
    """Where and when a sweep ran, and whether the server was an emulation."""

    url: str
    grpc_url: str | None
    metrics_urls: tuple[str, ...]
    protocol: str
    date: str
    """ISO-8601 UTC start of the sweep."""
    server_name: str
    server_version: str
    emulated: bool
    emulated_source: str
    """What said so: server metadata ``"emulated": true`` and/or the metrics label."""


@dataclass(frozen=True)
class SweepResult:
    """Every point of the grid (measured or missing), the load times and the provenance."""

    config: SweepConfig
    provenance: Provenance
    points: tuple[Point, ...]
    probes: tuple[Point, ...] = field(default=())
    """Batch-time probe: concurrency 1, ``images`` per request, one per (max_batch, size)."""
    reload_s: tuple[float, ...] = field(default=())
    """Wall time of each successful load-with-config call."""
    wall_s: float = 0.0


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _provenance(
    cfg: SweepConfig, target: triton_io.TritonTarget, clock: Callable[[], dt.datetime]
) -> Provenance:
    meta = await target.server_metadata()
    by_meta = meta.get("emulated") is True
    by_metrics = await asyncio.to_thread(triton_io.metrics_emulated, cfg.metrics_urls)
    sources = [s for s, on in (("server metadata", by_meta), ("metrics label", by_metrics)) if on]
    return Provenance(
        url=cfg.url,
        grpc_url=cfg.grpc_url,
        metrics_urls=cfg.metrics_urls,
        protocol=target.protocol,
        date=clock().isoformat(timespec="seconds"),
        server_name=str(meta.get("name", "?")),
        server_version=str(meta.get("version", "?")),
        emulated=bool(sources),
        emulated_source=(
            " and ".join(sources) if sources else "neither server metadata nor metrics say so"
        ),
    )


async def _snapshot(cfg: SweepConfig) -> ServerCounters | str:
    """Triton's counters now, or the reason they could not be read."""
    try:
        return await asyncio.to_thread(triton_io.scrape, cfg.metrics_urls, cfg.model)
    except Temporary as exc:
        return str(exc)


def _point(
    batch: int, inst: int, conc: int, images: int, client: ClientStats, before, after
) -> Point:
    """A point from the client figures and two counter snapshots (or why they are missing)."""
    where = {"max_batch": batch, "instances": inst, "concurrency": conc, "images": images}
    if client.ok == 0:
        why = f"no request succeeded in the window ({client.failed} failed"
        why += f": {client.first_error})" if client.first_error else ")"
        return Point(**where, client=client, missing=why)
    if isinstance(before, str) or isinstance(after, str):
        reason = before if isinstance(before, str) else after
        return Point(**where, client=client, server_missing=str(reason))
    delta = after.minus(before)
    if delta.success <= 0 or delta.exec_count <= 0:
        why = "Triton's counters did not move over the window (another model? wrong pod?)"
        return Point(**where, client=client, server_missing=why)
    return Point(**where, client=client, server=delta)


async def _measure(
    cfg: SweepConfig, target: triton_io.TritonTarget, batch: int, inst: int, conc: int
) -> Point:
    """One closed-loop point: ``conc`` clients, single-image requests."""
    senders = [target.sender(cfg.seed * 100_003 + conc * 1_009 + i) for i in range(conc)]
    client, before, after = await triton_io.closed_loop(
        senders,
        cfg.warmup_s,
        cfg.duration_s,
        cfg.timeout_s,
        lambda: _snapshot(cfg),
        triton_io.request_errors(),
    )
    return _point(batch, inst, conc, 1, client, before, after)


async def _probe(
    cfg: SweepConfig, target: triton_io.TritonTarget, batch: int, inst: int, sizes: list[int]
) -> list[Point]:
    """Batch-time probe: sequential requests of 1, 2, 4, … ``batch`` images each.

    Closed-loop single-image load only tells the *mean* batch Triton formed, while each
    request is charged its whole batch's compute time, so batch-size spread biases a fit of
    time against mean batch. One request at a time carrying b images is executed alone, as
    ``perf_analyzer -b`` measures it: its compute time is exactly that of a batch of b.
    """
    out = []
    for images in sizes:
        send = target.sender(cfg.seed + images, images)
        await send()  # warm-up: first request of a new shape
        client, before, after = await triton_io.sequential(
            send,
            cfg.probe_requests,
            cfg.timeout_s,
            lambda: _snapshot(cfg),
            triton_io.request_errors(),
        )
        out.append(_point(batch, inst, 1, images, client, before, after))
    return out


async def run_sweep_async(
    cfg: SweepConfig,
    progress: bool = True,
    clock: Callable[[], dt.datetime] = _utc_now,
) -> SweepResult:
    """Run the whole grid against ``cfg.url`` (see module doc); never raises for one point."""
    cfg.validate()
    loop = asyncio.get_running_loop()
    started = loop.time()
    target = triton_io.TritonTarget(cfg.url, cfg.grpc_url, cfg.model, cfg.timeout_s)
    points: list[Point] = []
    probes: list[Point] = []
    reloads: list[float] = []
    total = len(cfg.settings()) * len(cfg.concurrency)
    probed: set[int] = set()
    try:
        prov = await _provenance(cfg, target, clock)
        with tqdm(total=total, desc="calibrate", file=sys.stderr, disable=not progress) as bar:
            for batch, inst in cfg.settings():
                bar.set_postfix_str(f"load batch={batch} instances={inst}")
                try:
                    reloads.append(await target.load(cfg.model_config(batch, inst)))
                except triton_io.request_errors() as exc:
                    why = f"model load failed: {type(exc).__name__}: {exc}".splitlines()[0]
                    log.info("load failed", extra={"batch": batch, "instances": inst, "why": why})
                    points += [Point(batch, inst, c, missing=why[:300]) for c in cfg.concurrency]
                    bar.update(len(cfg.concurrency))
                    continue
                sizes = [b for b in cfg.probe_sizes(batch) if b not in probed]
                if sizes:
                    bar.set_postfix_str(f"batch={batch} instances={inst} batch-time probe")
                    probed.update(sizes)
                    try:
                        probes += await _probe(cfg, target, batch, inst, sizes)
                    except triton_io.request_errors() as exc:
                        log.info("probe failed", extra={"batch": batch, "error": str(exc)})
                for conc in cfg.concurrency:
                    bar.set_postfix_str(f"batch={batch} instances={inst} concurrency={conc}")
                    points.append(await _measure(cfg, target, batch, inst, conc))
                    bar.update()
    finally:
        await target.close()
    wall_s = loop.time() - started
    return SweepResult(cfg, prov, tuple(points), tuple(probes), tuple(reloads), wall_s)


def run_sweep(cfg: SweepConfig, progress: bool = True) -> SweepResult:
    """:func:`run_sweep_async` on a fresh event loop."""
    return asyncio.run(run_sweep_async(cfg, progress))
