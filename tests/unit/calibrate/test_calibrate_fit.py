"""Fitting the twin's service times from a Triton sweep: known parameters come back."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ecrl.calibrate.fit import FitError, cv_from_tail, fit_line_nonneg, fit_params
from ecrl.calibrate.points import Point
from tests.unit.calibrate.synthetic import Truth, sweep


def test_fit_recovers_known_parameters_exactly_without_noise() -> None:
    truth = Truth()
    result = sweep(truth)
    f = fit_params(result.points, result.probes, result.reload_s)
    assert f.exec_source == "probe"
    assert f.exec_intercept_s == pytest.approx(truth.exec_intercept_s, rel=1e-6)
    assert f.exec_slope_s == pytest.approx(truth.exec_slope_s, rel=1e-6)
    assert f.cpu_s_per_request == pytest.approx(truth.cpu_s, rel=1e-6)
    assert f.client_overhead_s == pytest.approx(truth.client_s, rel=1e-6)
    assert f.host_s_per_batch == pytest.approx(truth.host_s, rel=1e-6)
    assert f.service_cv == pytest.approx(truth.cv, rel=1e-6)
    assert f.reload_s == pytest.approx(2.0)
    assert f.notes == ()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_known_parameters_within_noise(seed: int) -> None:
    truth = Truth(exec_intercept_s=0.02, exec_slope_s=0.003, cpu_s=0.11, client_s=0.006)
    result = sweep(truth, noise=0.02, seed=seed)
    f = fit_params(result.points, result.probes, result.reload_s)
    assert f.exec_time_s(1) == pytest.approx(truth.exec_s(1), rel=0.05)
    assert f.exec_time_s(8) == pytest.approx(truth.exec_s(8), rel=0.05)
    assert f.exec_slope_s == pytest.approx(truth.exec_slope_s, rel=0.3)
    assert f.cpu_s_per_request == pytest.approx(truth.cpu_s, rel=0.05)
    assert f.exec_rmse_s > 0


def test_fit_without_probe_uses_mean_batch_and_says_the_slope_is_overstated() -> None:
    truth = Truth()
    result = sweep(truth, probe=False)
    f = fit_params(result.points, (), result.reload_s)
    assert f.exec_source == "sweep"
    assert any("overstated" in n for n in f.notes)
    # batch sizes spread → the request-weighted batch exceeds the mean batch → slope too high
    assert f.exec_slope_s > truth.exec_slope_s
    assert f.exec_time_s(1) == pytest.approx(truth.exec_s(1), rel=0.1)


def test_missing_points_are_skipped_never_filled_in() -> None:
    result = sweep(Truth(), missing=True)
    assert sum(not p.measured for p in result.points) == 3
    f = fit_params(result.points, result.probes)
    assert f.uncontended_points == 3 + 1  # three measured concurrency-1 settings + 1-image probe
    assert f.reload_s is None  # no load times given: missing, not a default


def test_fit_refuses_when_nothing_was_measured() -> None:
    dead = [Point(8, 1, c, missing="model load failed") for c in (1, 4)]
    with pytest.raises(FitError, match="exec_s"):
        fit_params(dead)


def test_fit_without_concurrency_one_uses_the_lowest_and_notes_it() -> None:
    result = sweep(Truth(), probe=False)
    loaded = [p for p in result.points if p.concurrency != 1]
    f = fit_params(loaded)
    assert any("concurrency 4" in n for n in f.notes)
    assert f.cpu_s_per_request > Truth().cpu_s  # shared CPU at concurrency 4: overstated


def test_nonnegative_line_clamps_a_negative_slope_to_zero() -> None:
    line = fit_line_nonneg([1, 2, 4, 8], [0.010, 0.009, 0.009, 0.008])
    assert line.slope == 0.0
    assert line.intercept == pytest.approx(0.009)
    flat = fit_line_nonneg([4, 4], [0.01, 0.012])
    assert (flat.slope, flat.intercept) == (0.0, pytest.approx(0.011))


@pytest.mark.parametrize("cv", [0.0, 0.01, 0.05, 0.3, 1.0])
def test_cv_from_tail_inverts_the_twins_no_wait_latency(cv: float) -> None:
    base = 0.07
    mean = base * (1 + cv)
    p95 = base * (1 + cv * math.log(20))
    assert cv_from_tail(mean, p95) == pytest.approx(cv, abs=1e-12)


def test_exec_table_covers_powers_of_two_up_to_the_largest_batch() -> None:
    f = fit_params(sweep(Truth()).points, sweep(Truth()).probes)
    sizes, times = f.exec_table(12)
    assert sizes == (1, 2, 4, 8, 12)
    assert np.all(np.diff(times) >= 0)
    assert f.exec_table(1)[0] == (1, 2)
