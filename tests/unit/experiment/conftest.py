"""Synthetic experiment results (series and per-run KPIs) for the stats, plots and report tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ecrl.experiment.kpis import KPI_NAMES, SERIES_COLUMNS

MODES = ("baseline", "rl", "oracle")
PROFILES = ("step", "constant")
SLO_P95_S = 0.1


def make_series(
    modes: tuple[str, ...] = MODES,
    profiles: tuple[str, ...] = PROFILES,
    repeats: int = 2,
    duration_s: int = 60,
    seed: int = 7,
) -> pd.DataFrame:
    """Long per-second series: modes × profiles × repeats × duration_s, every SERIES_COLUMNS column.

    The "step" profile triples the users at t=20 s; the baseline lags (latency spikes above the
    SLO, replicas follow late), the oracle has its replicas ready before the step.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(duration_s, dtype=float)
    frames = []
    for profile in profiles:
        users = np.where(t >= 20, 30.0, 10.0) if profile == "step" else np.full(duration_s, 15.0)
        for k, mode in enumerate(modes):
            lag_s = {"baseline": 15, "rl": 5}.get(mode, -2)
            for repeat in range(repeats):
                need = np.ceil(users / 10.0)
                replicas = need[np.clip(np.arange(duration_s) - lag_s, 0, duration_s - 1)]
                overload = np.clip(users / (replicas * 10.0), 0.0, 3.0)
                p95 = 0.05 * overload**2 + rng.normal(0.0, 0.003, duration_s) + 0.01 * k
                frame = {
                    "time_s": t,
                    "users": users,
                    "offered_rps": users * 2.0,
                    "throughput_rps": np.minimum(users * 2.0, replicas * 20.0),
                    "failure_rps": np.where(overload > 2.5, 1.0, 0.0),
                    "latency_avg_s": p95 * 0.6,
                    "latency_p95_s": np.abs(p95),
                    "latency_p99_s": np.abs(p95) * 1.3,
                    "replicas_desired": replicas,
                    "replicas_ready": replicas,
                    "replicas_pending": np.zeros(duration_s),
                    "gpu_replicas": replicas,
                    "gpu_util_ratio": np.clip(
                        overload * 0.7 + rng.normal(0, 0.02, duration_s), 0, 1
                    ),
                    "cpu_util_ratio": np.clip(overload * 0.5, 0, 1),
                    "memory_util_ratio": np.full(duration_s, 0.4),
                    "vram_used_bytes": replicas * 1.5e9,
                    "max_batch_size": np.full(duration_s, 8.0),
                    "instance_count": np.ones(duration_s),
                    "cpu_request_cores": np.full(duration_s, 2.0),
                    "memory_request_bytes": np.full(duration_s, 2.0 * 2**30),
                }
                df = pd.DataFrame({c: frame[c] for c in SERIES_COLUMNS})
                df.insert(0, "repeat", repeat)
                df.insert(0, "profile", profile)
                df.insert(0, "mode", mode)
                frames.append(df)
    return pd.DataFrame(pd.concat(frames, ignore_index=True))


_KPI_LEVELS: dict[str, float] = {
    "latency_avg_s": 0.04,
    "latency_p95_s": 0.09,
    "latency_p99_s": 0.15,
    "throughput_rps": 55.0,
    "success_ratio": 0.98,
    "slo_violation_ratio": 0.2,
    "gpu_util_ratio": 0.55,
    "cpu_util_ratio": 0.45,
    "memory_util_ratio": 0.35,
    "gpu_replica_seconds": 100.0,
    "replicas_mean": 2.5,
    "scaling_actions_per_hour": 30.0,
    "replica_actions_per_hour": 30.0,
    "reaction_time_s": 12.0,
}
"""Baseline level of each KPI in the synthetic runs (other modes scale it)."""


def make_kpis(
    modes: tuple[str, ...] = MODES,
    profiles: tuple[str, ...] = PROFILES,
    repeats: int = 5,
    seed: int = 11,
) -> pd.DataFrame:
    """One row per run (mode, profile, repeat, seed + every KPI) with mode-dependent means.

    ``reaction_time_s`` is NaN on "constant" (no load step: the KPI does not apply) and on the
    first two rl repeats of "step" (partially missing), so missing handling is exercised.
    """
    rng = np.random.default_rng(seed)
    level = {"baseline": 1.0, "rl": 0.8, "oracle": 0.6}
    rows = []
    for profile in profiles:
        for mode in modes:
            for repeat in range(repeats):
                f = level.get(mode, 1.0) * (1.0 + rng.normal(0.0, 0.05))
                row: dict[str, object] = {
                    "mode": mode,
                    "profile": profile,
                    "repeat": repeat,
                    "seed": 1000 + repeat,
                }
                for kpi in KPI_NAMES:
                    value = _KPI_LEVELS[kpi] * f * (1.0 + rng.normal(0.0, 0.02))
                    row[kpi] = min(value, 1.0) if kpi.endswith("_ratio") else value
                if profile == "constant" or (mode == "rl" and repeat < 2):
                    row["reaction_time_s"] = math.nan
                rows.append(row)
    return pd.DataFrame(rows)


# Session-scoped: building the frames is cheap but the report and plot fixtures that use them are
# module-scoped. Tests must not change them in place — copy first (``df.copy()``).


@pytest.fixture(scope="session")
def synthetic_series() -> pd.DataFrame:
    """3 modes × 2 profiles × 2 repeats × 60 s of per-second series."""
    return make_series()


@pytest.fixture(scope="session")
def synthetic_kpis() -> pd.DataFrame:
    """3 modes × 2 profiles × 5 repeats of per-run KPIs, some missing."""
    return make_kpis()


@pytest.fixture(scope="session")
def meta() -> dict[str, object]:
    """Run description as the experiment harness passes it to the report."""
    return {
        "modes": list(MODES),
        "profiles": list(PROFILES),
        "repeats": 5,
        "seeds": [1000, 1001, 1002, 1003, 1004],
        "config_hash": "cafe1234",
        "backend": "twin",
        "twin_profile": "rtx3080-mobilenetv4",
        "slo_p95_s": SLO_P95_S,
        "date": "2025-01-02T03:04:05Z",
    }
