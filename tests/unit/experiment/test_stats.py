"""Statistics: CI half-widths, Welch and Mann-Whitney p-values, missing values, the summary."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from ecrl.experiment.kpis import KPI_NAMES
from ecrl.experiment.stats import (
    COST_KPI,
    SUMMARY_COLUMNS,
    compare,
    mean_ci,
    mwu_p_value,
    significance_marks,
    summarize,
    welch_p_value,
)

# Welch's t-test worked example (Wikipedia, "Welch's t-test", example 1):
# t = -2.46, ν ≈ 25.0, two-sided p = 0.021.
WIKI_A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
WIKI_A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


def _samples(seed: int, n_a: int, n_b: int, scale_b: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(10.0, 1.0, n_a), rng.normal(11.0, scale_b, n_b)


# --- mean_ci -------------------------------------------------------------------------------------


def test_mean_ci_matches_textbook_value_for_five_values() -> None:
    # 10..18 step 2: mean 14, s = √10; t(0.975, 4) = 2.776 from the t table;
    # half-width = 2.776 · √10 / √5 = 2.776 · √2 = 3.926.
    ci = mean_ci([10.0, 12.0, 14.0, 16.0, 18.0])
    assert ci.mean == 14.0
    assert ci.n == 5
    assert ci.n_missing == 0
    assert ci.half_width == pytest.approx(3.926, abs=1e-3)


def test_mean_ci_with_two_values_uses_t_with_one_degree_of_freedom() -> None:
    # [1, 3]: s = √2, sem = 1; t(0.975, 1) = 12.706 (t table).
    assert mean_ci([1.0, 3.0]).half_width == pytest.approx(12.706, abs=1e-3)


@pytest.mark.parametrize("confidence", [0.80, 0.90, 0.95, 0.99])
@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_mean_ci_matches_scipy_t_interval(n: int, confidence: float) -> None:
    x = np.random.default_rng(n).lognormal(0.0, 0.5, n)
    lo, hi = sps.t.interval(confidence, n - 1, loc=x.mean(), scale=sps.sem(x))
    ci = mean_ci(x, confidence)
    assert ci.mean == pytest.approx((lo + hi) / 2.0, rel=1e-12)
    assert ci.half_width == pytest.approx((hi - lo) / 2.0, rel=1e-9)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=2, max_size=40
    ).filter(lambda v: np.std(v) > 1e-3)
)
def test_mean_ci_agrees_with_scipy_for_any_sample(values: list[float]) -> None:
    x = np.asarray(values)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert mean_ci(x).half_width == pytest.approx((hi - lo) / 2.0, rel=1e-7)


def test_mean_ci_drops_nan_and_counts_it_missing() -> None:
    ci = mean_ci([1.0, math.nan, 3.0, math.nan])
    assert (ci.mean, ci.n, ci.n_missing) == (2.0, 2, 2)
    assert ci.half_width == pytest.approx(12.706, abs=1e-3)


def test_mean_ci_of_one_value_has_a_mean_but_no_half_width() -> None:
    ci = mean_ci([4.2, math.nan])
    assert (ci.mean, ci.n, ci.n_missing) == (4.2, 1, 1)
    assert math.isnan(ci.half_width)


def test_mean_ci_of_only_missing_values_is_missing_not_zero() -> None:
    ci = mean_ci([math.nan, math.nan, math.nan])
    assert (ci.n, ci.n_missing) == (0, 3)
    assert math.isnan(ci.mean)
    assert math.isnan(ci.half_width)


def test_mean_ci_of_constant_values_has_zero_half_width() -> None:
    assert mean_ci([5.0, 5.0, 5.0]).half_width == 0.0


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95.0, -0.5])
def test_mean_ci_rejects_confidence_outside_the_open_unit_interval(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence)


# --- Welch and Mann-Whitney ----------------------------------------------------------------------


def test_welch_p_value_reproduces_the_published_worked_example() -> None:
    assert welch_p_value(WIKI_A1, WIKI_A2) == pytest.approx(0.021, abs=5e-4)


def test_welch_p_value_for_hand_computed_t_and_degrees_of_freedom() -> None:
    # [1,2,3] vs [4,5,6]: variances 1 and 1, se = √(2/3), t = -3/√(2/3) = -3.674,
    # ν = (2/3)² / (2 · (1/3)² / 2) = 4; two-sided p for |t| = 3.674 with 4 df = 0.0213.
    assert welch_p_value([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.02131, abs=1e-5)


@pytest.mark.parametrize(
    ("seed", "n_a", "n_b", "scale_b"),
    [(1, 5, 5, 1.0), (2, 5, 8, 3.0), (3, 3, 12, 0.2), (4, 20, 6, 5.0), (5, 2, 2, 1.0)],
)
def test_welch_p_value_matches_scipy_ttest_ind_unequal_var(
    seed: int, n_a: int, n_b: int, scale_b: float
) -> None:
    a, b = _samples(seed, n_a, n_b, scale_b)
    expected = sps.ttest_ind(a, b, equal_var=False).pvalue
    assert welch_p_value(a, b) == pytest.approx(expected, rel=1e-9)


def test_welch_p_value_ignores_nan_like_scipy_omit() -> None:
    a = [1.0, math.nan, 2.5, 3.0, 4.0]
    b = [3.0, 4.0, math.nan, 6.5, 5.0]
    expected = sps.ttest_ind(a, b, equal_var=False, nan_policy="omit").pvalue
    assert welch_p_value(a, b) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("a", "b"),
    [([1.0], [1.0, 2.0, 3.0]), ([1.0, math.nan], [2.0, 3.0]), ([2.0, 2.0], [3.0, 3.0])],
    ids=["one-value", "one-value-after-nan", "both-constant"],
)
def test_welch_p_value_is_nan_when_the_test_is_undefined(a: list[float], b: list[float]) -> None:
    assert math.isnan(welch_p_value(a, b))


@pytest.mark.parametrize(
    ("seed", "n_a", "n_b", "scale_b"),
    [(1, 5, 5, 1.0), (2, 5, 8, 3.0), (3, 10, 12, 1.0), (4, 30, 25, 2.0)],
)
def test_mwu_p_value_matches_scipy_mannwhitneyu(
    seed: int, n_a: int, n_b: int, scale_b: float
) -> None:
    a, b = _samples(seed, n_a, n_b, scale_b)
    expected = sps.mannwhitneyu(a, b, alternative="two-sided").pvalue
    assert mwu_p_value(a, b) == pytest.approx(expected, rel=1e-12)


def test_mwu_p_value_matches_scipy_with_ties() -> None:
    a = [1.0, 2.0, 2.0, 3.0, 5.0]
    b = [2.0, 3.0, 3.0, 4.0, 6.0]
    expected = sps.mannwhitneyu(a, b, alternative="two-sided").pvalue
    assert mwu_p_value(a, b) == pytest.approx(expected, rel=1e-12)


def test_mwu_exact_p_for_fully_separated_samples_of_three_is_two_in_twenty() -> None:
    # U = 0; only 2 of the C(6,3) = 20 equally likely rank splits are as extreme (two-sided).
    assert mwu_p_value([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)


def test_mwu_p_value_is_nan_when_a_sample_is_all_missing() -> None:
    assert math.isnan(mwu_p_value([math.nan, math.nan], [1.0, 2.0]))


def test_compare_reports_difference_and_ratio_of_means_without_nan() -> None:
    cmp = compare([2.0, 4.0, math.nan], [4.0, 6.0])
    assert cmp.mean_diff == pytest.approx(-2.0)
    assert cmp.ratio == pytest.approx(0.6)
    assert cmp.p_welch == pytest.approx(welch_p_value([2.0, 4.0], [4.0, 6.0]))
    assert cmp.p_mwu == pytest.approx(mwu_p_value([2.0, 4.0], [4.0, 6.0]))


def test_compare_ratio_is_nan_when_the_reference_mean_is_zero() -> None:
    assert math.isnan(compare([1.0, 2.0], [0.0, 0.0]).ratio)


@pytest.mark.parametrize(
    ("p", "marks"),
    [(0.0005, "***"), (0.001, "**"), (0.009, "**"), (0.01, "*"), (0.049, "*"), (0.05, ""),
     (0.8, ""), (math.nan, "")],
)  # fmt: skip
def test_significance_marks_follow_the_conventional_thresholds(p: float, marks: str) -> None:
    assert significance_marks(p) == marks


# --- summarize -----------------------------------------------------------------------------------


def _runs(
    values: dict[str, list[float]], kpi: str = COST_KPI, profile: str = "step"
) -> pd.DataFrame:
    """KPI table where only ``kpi`` varies; every other KPI is 1.0."""
    rows = []
    for mode, vals in values.items():
        for repeat, v in enumerate(vals):
            row: dict[str, object] = {"mode": mode, "profile": profile, "repeat": repeat}
            row.update(dict.fromkeys(KPI_NAMES, 1.0))
            row["seed"] = repeat
            row[kpi] = v
            rows.append(row)
    return pd.DataFrame(rows)


def _row(summary: pd.DataFrame, mode: str, kpi: str, profile: str = "step") -> pd.Series:
    sel = summary[
        (summary["mode"] == mode) & (summary["kpi"] == kpi) & (summary["profile"] == profile)
    ]
    assert len(sel) == 1
    return sel.iloc[0]


def test_summarize_ratio_to_oracle_divides_mean_cost_by_the_oracle_mean_cost() -> None:
    kpis = _runs({"baseline": [200.0, 220.0], "rl": [150.0, 150.0], "oracle": [90.0, 110.0]})
    summary = summarize(kpis, "baseline", "oracle")
    assert _row(summary, "baseline", COST_KPI)["ratio_to_oracle"] == pytest.approx(2.1)
    assert _row(summary, "rl", COST_KPI)["ratio_to_oracle"] == pytest.approx(1.5)
    assert _row(summary, "oracle", COST_KPI)["ratio_to_oracle"] == pytest.approx(1.0)
    assert _row(summary, "rl", COST_KPI)["ratio_to_baseline"] == pytest.approx(150.0 / 210.0)


def test_summarize_fills_ratio_to_oracle_only_for_the_cost_kpi() -> None:
    summary = summarize(_runs({"baseline": [2.0, 3.0], "oracle": [1.0, 1.5]}), "baseline", "oracle")
    others = summary[summary["kpi"] != COST_KPI]
    assert others["ratio_to_oracle"].isna().all()


def test_summarize_without_oracle_leaves_ratio_to_oracle_missing() -> None:
    summary = summarize(_runs({"baseline": [2.0, 3.0], "rl": [1.0, 1.5]}), "baseline", None)
    assert summary["ratio_to_oracle"].isna().all()


def test_summarize_gives_no_p_values_for_the_baseline_and_scipy_values_for_others() -> None:
    base, rl = [10.0, 12.0, 11.0, 13.0, 12.5], [8.0, 9.5, 9.0, 8.5, 10.0]
    summary = summarize(_runs({"baseline": base, "rl": rl}), "baseline")
    b = _row(summary, "baseline", COST_KPI)
    assert math.isnan(b["p_welch"]) and math.isnan(b["p_mwu"])
    assert b["ratio_to_baseline"] == 1.0
    r = _row(summary, "rl", COST_KPI)
    assert r["p_welch"] == pytest.approx(sps.ttest_ind(rl, base, equal_var=False).pvalue)
    assert r["p_mwu"] == pytest.approx(sps.mannwhitneyu(rl, base).pvalue)
    assert r["diff_to_baseline"] == pytest.approx(np.mean(rl) - np.mean(base))


def test_summarize_reports_missing_kpis_as_missing_never_filled() -> None:
    kpis = _runs({"baseline": [math.nan] * 3, "rl": [4.0, math.nan, 6.0]}, kpi="reaction_time_s")
    summary = summarize(kpis, "baseline")
    b = _row(summary, "baseline", "reaction_time_s")
    assert (b["n"], b["n_missing"]) == (0, 3)
    assert math.isnan(b["mean"]) and math.isnan(b["ci_half"])
    r = _row(summary, "rl", "reaction_time_s")
    assert (r["mean"], r["n"], r["n_missing"]) == (5.0, 2, 1)
    assert math.isnan(r["p_welch"]) and math.isnan(r["ratio_to_baseline"])


def test_summarize_has_one_row_per_profile_mode_and_kpi(synthetic_kpis: pd.DataFrame) -> None:
    summary = summarize(synthetic_kpis, "baseline", "oracle")
    assert tuple(summary.columns) == SUMMARY_COLUMNS
    assert len(summary) == 2 * 3 * len(KPI_NAMES)
    assert not summary.duplicated(["profile", "mode", "kpi"]).any()
    assert list(pd.unique(summary["mode"])) == ["baseline", "rl", "oracle"]


def test_summarize_compares_only_within_the_same_profile() -> None:
    kpis = pd.concat(
        [
            _runs({"baseline": [1.0, 1.2], "rl": [2.0, 2.2]}, profile="a"),
            _runs({"rl": [5.0, 5.5]}, profile="b"),
        ]
    )
    summary = summarize(kpis, "baseline")
    assert _row(summary, "rl", COST_KPI, "a")["ratio_to_baseline"] == pytest.approx(2.1 / 1.1)
    assert math.isnan(_row(summary, "rl", COST_KPI, "b")["ratio_to_baseline"])


def test_summarize_rejects_kpis_without_a_kpi_column() -> None:
    kpis = _runs({"baseline": [1.0, 2.0]}).drop(columns=["reaction_time_s"])
    with pytest.raises(ValueError, match="reaction_time_s"):
        summarize(kpis, "baseline")
