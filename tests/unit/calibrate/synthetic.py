"""Synthetic Triton sweeps with known service-time parameters (what the fit must recover)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ecrl.calibrate.points import ClientStats, Point, ServerCounters, SweepConfig
from ecrl.calibrate.sweep import Provenance, SweepResult


@dataclass(frozen=True)
class Truth:
    """Known parameters a synthetic server follows (seconds)."""

    exec_intercept_s: float = 0.0055
    exec_slope_s: float = 0.0005
    cpu_s: float = 0.028
    client_s: float = 0.031
    host_s: float = 0.0004
    cv: float = 0.05

    def exec_s(self, b: float) -> float:
        return self.exec_intercept_s + self.exec_slope_s * b


def _counters(
    n: int,
    images: int,
    exec_per_request_s: float,
    other_s: float,
    queue_s: float,
    host_s: float,
    batches: float,
) -> ServerCounters:
    request_s = other_s + queue_s + exec_per_request_s + host_s
    return ServerCounters(
        success=n,
        failure=0,
        inference_count=n * images,
        exec_count=batches,
        request_us=n * request_s * 1e6,
        queue_us=n * queue_s * 1e6,
        compute_input_us=n * host_s * 0.5e6,
        compute_infer_us=n * exec_per_request_s * 1e6,
        compute_output_us=n * host_s * 0.5e6,
    )


def _client(n: int, server_s: float, truth: Truth, window_s: float) -> ClientStats:
    mean = server_s + truth.client_s
    base = mean / (1.0 + truth.cv)
    p95 = base * (1.0 + truth.cv * math.log(20.0))
    return ClientStats(n, 0, window_s, n / window_s, mean, base, p95, p95 * 1.1)


def probe_point(truth: Truth, images: int, n: int = 10, noise: float = 0.0, rng=None) -> Point:
    """One request of ``images`` images at a time: exact batch, no queue, no CPU sharing."""
    jitter = 1.0 + (rng.normal(0.0, noise) if rng is not None else 0.0)
    exec_s = truth.exec_s(images) * jitter
    server = _counters(n, images, exec_s, truth.cpu_s, 0.0, truth.host_s, n)
    client = _client(n, server.request_us / n / 1e6, truth, 5.0)
    return Point(8, 1, 1, images, client=client, server=server)


def sweep_point(
    truth: Truth, max_batch: int, instances: int, conc: int, noise: float = 0.0, rng=None
) -> Point:
    """A closed-loop point: contended CPU above concurrency 1, spread batch sizes."""
    jitter = 1.0 + (rng.normal(0.0, noise) if rng is not None else 0.0)
    n = 100
    # batches of 1 and of min(conc, max_batch): request-weighted mean exceeds the mean batch
    big = min(conc, max_batch)
    n_big_batches = (n // 2) // big if big > 1 else 0
    n_small = n - n_big_batches * big
    batches = n_small + n_big_batches
    exec_per_request = (n_small * truth.exec_s(1) + n_big_batches * big * truth.exec_s(big)) / n
    stretch = max(1.0, conc / 2.0)  # processor sharing on two cores
    server = _counters(
        n,
        1,
        exec_per_request * jitter,
        truth.cpu_s * stretch * jitter,
        0.002 * conc,
        truth.host_s,
        batches,
    )
    client = _client(n, server.request_us / n / 1e6, truth, 10.0)
    return Point(max_batch, instances, conc, 1, client=client, server=server)


def sweep(
    truth: Truth = Truth(),
    noise: float = 0.0,
    seed: int = 0,
    missing: bool = True,
    probe: bool = True,
) -> SweepResult:
    """A whole synthetic sweep (grid 1,8 × 1,2 × 1,4,16), one missing setting if asked."""
    rng = np.random.default_rng(seed)
    cfg = SweepConfig(
        url="http://127.0.0.1:8000",
        metrics_urls=("http://127.0.0.1:8002/metrics",),
        batch_sizes=(1, 8),
        instances=(1, 2),
        concurrency=(1, 4, 16),
        duration_s=10.0,
    )
    points = []
    for b, inst in cfg.settings():
        for c in cfg.concurrency:
            if missing and (b, inst) == (8, 2):
                points.append(Point(b, inst, c, missing="model load failed: CUDA out of memory"))
            else:
                points.append(sweep_point(truth, b, inst, c, noise, rng))
    probes = [probe_point(truth, i, noise=noise, rng=rng) for i in (1, 2, 4, 8)] if probe else []
    prov = Provenance(
        url=cfg.url,
        grpc_url=None,
        metrics_urls=cfg.metrics_urls,
        protocol="http",
        date="2026-11-29T00:00:00+00:00",
        server_name="triton",
        server_version="2.49.0",
        emulated=True,
        emulated_source="server metadata",
    )
    return SweepResult(cfg, prov, tuple(points), tuple(probes), (2.0, 2.1, 1.9), 123.0)
