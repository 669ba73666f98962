"""KPI helpers: a metric a backend does not have stays missing."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ecrl.experiment.kpis import mean_measured


def test_a_metric_with_no_sample_is_missing_not_zero() -> None:
    assert math.isnan(mean_measured(pd.Series([float("nan")] * 3)))
    assert mean_measured(pd.Series([float("nan"), 0.5, 0.7])) == pytest.approx(0.6)
