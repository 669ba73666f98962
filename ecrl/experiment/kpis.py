"""KPI definitions (one place, used by every backend) and their computation for one run.

A run is a per-second series (DataFrame, columns in :data:`SERIES_COLUMNS`) plus a
per-second latency histogram. Percentiles over the whole run are taken from the summed
histogram — the way Prometheus ``histogram_quantile`` and Locust's aggregated stats do —
never by averaging per-second percentiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from ecrl.histogram import histogram_quantile

SERIES_COLUMNS: tuple[str, ...] = (
    "time_s",
    "users",
    "offered_rps",
    "throughput_rps",
    "failure_rps",
    "latency_avg_s",
    "latency_p95_s",
    "latency_p99_s",
    "replicas_desired",
    "replicas_ready",
    "replicas_pending",
    "gpu_replicas",
    "gpu_util_ratio",
    "cpu_util_ratio",
    "memory_util_ratio",
    "vram_used_bytes",
    "max_batch_size",
    "instance_count",
    "cpu_request_cores",
    "memory_request_bytes",
)
"""Per-second series every backend writes (NaN where a value is missing that second)."""


@dataclass(frozen=True, slots=True)
class KpiSpec:
    """One KPI: its column name, unit, which direction is better and a label for plots."""

    name: str
    unit: str
    better: Literal["lower", "higher"]
    label: str


KPI_SPECS: tuple[KpiSpec, ...] = (
    KpiSpec("latency_avg_s", "s", "lower", "Latency avg"),
    KpiSpec("latency_p95_s", "s", "lower", "Latency p95"),
    KpiSpec("latency_p99_s", "s", "lower", "Latency p99"),
    KpiSpec("throughput_rps", "req/s", "higher", "Throughput"),
    KpiSpec("success_ratio", "ratio", "higher", "Success rate"),
    KpiSpec("slo_violation_ratio", "ratio", "lower", "SLO-violation seconds"),
    KpiSpec("gpu_util_ratio", "ratio", "higher", "GPU utilization"),
    KpiSpec("cpu_util_ratio", "ratio", "higher", "CPU utilization (of request)"),
    KpiSpec("memory_util_ratio", "ratio", "higher", "Memory utilization (of request)"),
    KpiSpec("gpu_replica_seconds", "replica·s", "lower", "Cost (GPU-replica-seconds)"),
    KpiSpec("replicas_mean", "replicas", "lower", "Replicas (mean)"),
    KpiSpec("scaling_actions_per_hour", "1/h", "lower", "Scaling actions per hour"),
    KpiSpec("replica_actions_per_hour", "1/h", "lower", "Replica changes per hour"),
    KpiSpec("reaction_time_s", "s", "lower", "Time to react to a load step"),
)
KPI_NAMES: tuple[str, ...] = tuple(k.name for k in KPI_SPECS)
KPI_BY_NAME: dict[str, KpiSpec] = {k.name: k for k in KPI_SPECS}

RECOVERY_HOLD_S = 10
"""Seconds p95 must stay within the SLO after a step for the step to count as absorbed."""


def slo_violation_seconds(series: pd.DataFrame, slo_p95_s: float) -> np.ndarray:
    """Boolean per second: p95 above the SLO, or any failed request that second.

    Seconds without traffic (p95 NaN and no failures) are not violations.
    """
    p95 = series["latency_p95_s"].to_numpy(dtype=float)
    fail = series["failure_rps"].to_numpy(dtype=float)
    over = np.where(np.isnan(p95), False, p95 > slo_p95_s)
    return over | (np.nan_to_num(fail) > 0)


MANAGED_SETTINGS: tuple[str, ...] = (
    "replicas_desired",
    "max_batch_size",
    "instance_count",
    "cpu_request_cores",
    "memory_request_bytes",
)


def scaling_actions(series: pd.DataFrame, cols: tuple[str, ...] = MANAGED_SETTINGS) -> int:
    """Number of changes to the managed settings ``cols`` (default: all of them)."""
    changes = 0
    for c in cols:
        v = series[c].to_numpy(dtype=float)
        changes += int(np.count_nonzero(np.diff(v) != 0))
    return changes


def reaction_time_s(series: pd.DataFrame, slo_p95_s: float, min_step_ratio: float = 1.5) -> float:
    """Mean time from each upward load step until p95 is back within the SLO.

    A step is a rise of offered users by at least ``min_step_ratio``× within one second.
    A step the system absorbs without violating counts as 0 s. A step never absorbed before
    the next step or the end of the run counts as the time until then (censored). NaN when
    the profile has no step — the KPI does not apply, and reports show it as missing.
    """
    users = series["users"].to_numpy(dtype=float)
    t = series["time_s"].to_numpy(dtype=float)
    viol = slo_violation_seconds(series, slo_p95_s)
    prev = np.concatenate([[users[0]], users[:-1]])
    steps = np.flatnonzero((users >= prev * min_step_ratio) & (users - prev >= 1))
    if len(steps) == 0:
        return math.nan
    times = []
    bounds = [*steps.tolist(), len(users)]
    for k, s in enumerate(steps):
        end = bounds[k + 1]
        ok_run = 0
        reacted = None
        for i in range(s, end):
            ok_run = 0 if viol[i] else ok_run + 1
            if ok_run >= RECOVERY_HOLD_S:
                reacted = i - RECOVERY_HOLD_S + 1
                break
        last = t[end - 1] if end - 1 >= s else t[s]
        times.append((t[reacted] - t[s]) if reacted is not None else (last - t[s]))
    return float(np.mean(times))


def mean_measured(values: pd.Series) -> float:
    """Mean of the seconds that have a sample; NaN (missing, not 0) when none has one — a
    backend without that metric, e.g. no DCGM exporter."""
    v = values.to_numpy(float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else math.nan


def compute_kpis(
    series: pd.DataFrame, latency_hist: np.ndarray, hist_edges_s: np.ndarray, slo_p95_s: float
) -> dict[str, float]:
    """All KPIs of one run (see :data:`KPI_SPECS`); NaN marks a KPI with no data."""
    hist = latency_hist.sum(axis=0)
    served = float(series["throughput_rps"].sum())
    failed = float(series["failure_rps"].sum())
    duration_s = float(len(series))
    lat_w = series["throughput_rps"].to_numpy(dtype=float)
    lat_avg = series["latency_avg_s"].to_numpy(dtype=float)
    mask = ~np.isnan(lat_avg) & (lat_w > 0)
    avg = float(np.average(lat_avg[mask], weights=lat_w[mask])) if mask.any() else math.nan
    viol = slo_violation_seconds(series, slo_p95_s)
    hours = duration_s / 3600.0
    return {
        "latency_avg_s": avg,
        "latency_p95_s": histogram_quantile(hist, hist_edges_s, 0.95),
        "latency_p99_s": histogram_quantile(hist, hist_edges_s, 0.99),
        "throughput_rps": served / duration_s if duration_s else math.nan,
        "success_ratio": served / (served + failed) if served + failed > 0 else math.nan,
        "slo_violation_ratio": float(viol.mean()) if duration_s else math.nan,
        "gpu_util_ratio": mean_measured(series["gpu_util_ratio"]),
        "cpu_util_ratio": mean_measured(series["cpu_util_ratio"]),
        "memory_util_ratio": mean_measured(series["memory_util_ratio"]),
        "gpu_replica_seconds": float(series["gpu_replicas"].sum()),
        "replicas_mean": float(series["replicas_ready"].mean()),
        "scaling_actions_per_hour": scaling_actions(series) / hours if hours else math.nan,
        "replica_actions_per_hour": (
            scaling_actions(series, ("replicas_desired",)) / hours if hours else math.nan
        ),
        "reaction_time_s": reaction_time_s(series, slo_p95_s),
    }
