"""Fit the twin's service-time parameters from a Triton sweep (pure functions, no I/O).

The twin's pod model (``ecrl.twin.service.pod_step``) needs, per profile:

- ``compute.exec_s`` — one batch's execution time per batch size. Fitted as the line
  ``exec(b) = intercept + slope · b`` by non-negative least squares (``scipy.optimize.nnls``
  on the columns [1, b]) over points whose batch is known exactly: the batch-time probe
  (one request of b images at a time, so Triton executes batches of exactly b; the value
  is Triton's compute-infer time per request). Without probe points it falls back to the
  sweep's (mean batch formed, compute per request) pairs, which overstate the slope when
  batch sizes vary (each request is charged its own batch's time: the request-weighted
  mean batch exceeds inference_count / exec_count); the report says which was used.
- ``server.host_s_per_batch`` — Triton's compute-input + compute-output time per request,
  mean over the same points (copies in/out; 0 where the server does not report them).
- ``server.cpu_s_per_request`` — Triton's request duration minus queue and compute, mean
  over *uncontended* points: single-image requests at concurrency 1 (sweep and probe), where
  nothing shares the CPU. Work before Triton's request timer starts is not in it.
- ``server.client_overhead_s`` — client-side mean latency minus Triton's request duration,
  mean over the uncontended points (encode, network, decode outside the server).
- ``server.service_cv`` — the twin's no-wait latency is ``base + Exp(cv · base)``, so
  ``(p95 − mean) / mean = cv (ln 20 − 1) / (1 + cv)``; solved for cv per uncontended point,
  mean over points.
- ``server.reload_s`` — the median wall time of the load-with-config calls.

Each mean is the least-squares constant. A parameter with no usable point raises
:class:`FitError` (nothing is guessed); everything the sweep cannot see (memory, VRAM,
power, start-up) is carried over from a base profile by ``ecrl.calibrate.triton_profile``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from ecrl.calibrate.points import Point
from ecrl.errors import Permanent

LN20_MINUS_1 = math.log(20.0) - 1.0
"""p95 of Exp(m) is m·ln 20; the twin's no-wait latency is base + Exp(jitter)."""
MAX_CV = 2.0
"""The profile loader's bound on ``service_cv``."""


class FitError(Permanent):
    """The measurements cannot determine a parameter (the message names it)."""


@dataclass(frozen=True)
class LinearFit:
    """``y = intercept + slope · x`` with its residual size."""

    intercept: float
    slope: float
    n: int
    rmse: float


@dataclass(frozen=True)
class FittedParams:
    """The service-time parameters of one pod, fitted from a sweep (seconds)."""

    exec_intercept_s: float
    exec_slope_s: float
    """Per image: ``exec(b) = exec_intercept_s + exec_slope_s · b``."""
    exec_source: str
    """"probe" (exact batch sizes) or "sweep" (mean batch formed; slope biased upward)."""
    exec_points: int
    exec_rmse_s: float
    host_s_per_batch: float
    cpu_s_per_request: float
    client_overhead_s: float
    service_cv: float
    uncontended_points: int
    reload_s: float | None
    notes: tuple[str, ...] = ()

    def exec_time_s(self, batch: float) -> float:
        return self.exec_intercept_s + self.exec_slope_s * batch

    def exec_table(self, max_batch: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Batch sizes 1, 2, 4, … up to ``max_batch`` (at least [1, 2]) and their times."""
        sizes = [1]
        while sizes[-1] * 2 <= max(max_batch, 2):
            sizes.append(sizes[-1] * 2)
        if sizes[-1] != max_batch and max_batch > 2:
            sizes.append(max_batch)
        return tuple(sizes), tuple(self.exec_time_s(b) for b in sizes)


def fit_line_nonneg(x: Sequence[float], y: Sequence[float]) -> LinearFit:
    """Least squares ``y ≈ a + b·x`` with a, b ≥ 0 (NNLS on the columns [1, x])."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.size == 0:
        raise FitError("exec_s: no point with a measured batch time")
    if np.ptp(xs) == 0:  # one batch size only: the slope is not identifiable
        return LinearFit(float(ys.mean()), 0.0, int(xs.size), float(ys.std()))
    design = np.column_stack([np.ones_like(xs), xs])
    (a, b), _ = nnls(design, ys)
    rmse = float(np.sqrt(np.mean((design @ np.array([a, b]) - ys) ** 2)))
    return LinearFit(float(a), float(b), int(xs.size), rmse)


def cv_from_tail(mean_s: float, p95_s: float) -> float:
    """The twin's service_cv that gives this (mean, p95) with no queueing (see module doc)."""
    r = max(p95_s - mean_s, 0.0) / mean_s
    if r >= LN20_MINUS_1:
        return MAX_CV
    return min(r / (LN20_MINUS_1 - r), MAX_CV)


def _uncontended(points: Sequence[Point], probes: Sequence[Point]) -> tuple[list[Point], str]:
    """Single-image points at concurrency 1 with server figures (or the least-loaded ones)."""
    usable = [p for p in (*points, *probes) if p.measured and p.server is not None]
    singles = [p for p in usable if p.images == 1]
    ones = [p for p in singles if p.concurrency == 1]
    if ones:
        return ones, ""
    if not singles:
        raise FitError("cpu_s_per_request: no single-image point with Triton's counters")
    lowest = min(p.concurrency for p in singles)
    note = (
        f"no concurrency-1 point: CPU, client overhead and jitter come from concurrency "
        f"{lowest}, where requests may already share the CPU (overstated)"
    )
    return [p for p in singles if p.concurrency == lowest], note


def _exec_points(points: Sequence[Point], probes: Sequence[Point]) -> tuple[list, list, str]:
    probe = [p for p in probes if p.measured and p.compute_s is not None]
    if len({p.images for p in probe}) >= 2:
        return [float(p.images) for p in probe], [p.compute_s for p in probe], "probe"
    sweep = [p for p in points if p.measured and p.batch_formed is not None]
    x = [p.batch_formed for p in sweep] + [float(p.images) for p in probe]
    y = [p.compute_s for p in sweep] + [p.compute_s for p in probe]
    return x, y, "sweep"


def fit_params(
    points: Sequence[Point], probes: Sequence[Point] = (), reload_s: Sequence[float] = ()
) -> FittedParams:
    """Fit every service-time parameter the twin reads (module doc: which data, how)."""
    notes: list[str] = []
    x, y, source = _exec_points(points, probes)
    line = fit_line_nonneg(x, y)
    if source == "sweep":
        notes.append(
            "exec_s fitted against the mean batch formed (no batch-time probe): the slope "
            "is overstated when batch sizes vary"
        )
    if len(set(x)) < 2:
        notes.append("one batch size only: exec_s is flat (per-image slope not identifiable)")
    quiet, why = _uncontended(points, probes)
    if why:
        notes.append(why)
    exec_like = [p for p in (*points, *probes) if p.measured and p.host_s is not None]
    host = float(np.mean([p.host_s for p in exec_like])) if exec_like else 0.0
    cpu = float(np.mean([p.other_s for p in quiet]))
    client = [p.client.latency_mean_s - p.server_s for p in quiet]  # type: ignore[union-attr]
    overhead = max(float(np.mean(client)), 0.0)
    if min(client) < 0:
        notes.append("client latency below Triton's request duration at some point (clocks?)")
    cvs = [cv_from_tail(p.client.latency_mean_s, p.client.p95_s) for p in quiet]  # type: ignore[union-attr]
    return FittedParams(
        exec_intercept_s=line.intercept,
        exec_slope_s=line.slope,
        exec_source=source,
        exec_points=line.n,
        exec_rmse_s=line.rmse,
        host_s_per_batch=host,
        cpu_s_per_request=cpu,
        client_overhead_s=overhead,
        service_cv=float(np.mean(cvs)),
        uncontended_points=len(quiet),
        reload_s=float(np.median(reload_s)) if len(reload_s) else None,
        notes=tuple(notes),
    )
