"""The testbed backend's per-second series: built from what was measured, never filled in."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ecrl.errors import ConfigError
from ecrl.experiment.kpis import SERIES_COLUMNS
from ecrl.experiment.testbed_backend import build_series, check_modes

START = 1_000_000.0


def requests() -> pd.DataFrame:
    # Locust's per-request log: send time, latency in ms, "" when no exception (as read).
    return pd.DataFrame(
        {
            "timestamp": [START + 0.1, START + 0.5, START + 1.2, START + 1.3, START + 2.9],
            "response_time_ms": [100.0, 300.0, 200.0, 50.0, 10.0],
            "exception": ["", "", "", "ConnectionError", ""],
        }
    )


def test_latency_and_throughput_per_completion_second() -> None:
    series, hist = build_series(requests(), pd.DataFrame(), {}, [], START, 4)
    assert list(series.columns) == list(SERIES_COLUMNS)
    assert series["offered_rps"].tolist() == [2.0, 2.0, 1.0, 0.0]
    assert series["throughput_rps"].tolist() == [2.0, 1.0, 1.0, 0.0]  # completions
    assert series["failure_rps"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert series.loc[0, "latency_avg_s"] == pytest.approx(0.2)
    assert series.loc[2, "latency_p95_s"] == pytest.approx(0.01)
    assert hist.sum() == 4  # successes only
    assert math.isnan(series.loc[3, "latency_avg_s"])  # no traffic: no latency, not zero


def test_missing_cluster_samples_stay_nan() -> None:
    replicas = pd.Series([1.0, 2.0], index=[0, 2])
    series, _ = build_series(
        requests(),
        pd.DataFrame(),
        {"replicas_ready": replicas},
        [(START + 1.5, 16.0, 2.0)],
        START,
        4,
    )
    assert (
        series["replicas_ready"].tolist()[0] == 1.0 and series["replicas_ready"].tolist()[2] == 2.0
    )
    assert np.isnan(series["replicas_ready"].tolist()[1])
    assert series.loc[1, "max_batch_size"] == 16.0 and np.isnan(series.loc[0, "max_batch_size"])
    assert series["gpu_util_ratio"].isna().all()


def test_modes_not_on_the_testbed_are_refused_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="--modes.*kpa"):
        check_modes(("hpa-cpu", "kpa", "rl"))
