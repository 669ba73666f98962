"""Statistics over repeated runs: mean ± 95 % CI, Welch and Mann-Whitney tests, the summary table.

DESIGN.md ("KPIs") asks for mean ± 95 % CI over N ≥ 5 repeats and, per KPI, a Welch t-test and a
Mann-Whitney U test against the baseline. Everything here is a pure function of plain data so the
report, the plots and the CLI all read the same numbers.

Missing values (NaN) are dropped and counted, never filled: a KPI that could not be measured in a
run (e.g. ``reaction_time_s`` on a profile without a load step) must show up as missing in the
report, not as a fabricated zero or mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as sps

from ecrl.experiment.kpis import KPI_BY_NAME, KPI_NAMES

COST_KPI = "gpu_replica_seconds"
"""KPI compared with the oracle, whose cost is the physical floor (DESIGN.md, "Modes compared")."""

SUMMARY_COLUMNS: tuple[str, ...] = (
    "profile",
    "mode",
    "kpi",
    "unit",
    "better",
    "mean",
    "ci_half",
    "n",
    "n_missing",
    "p_welch",
    "p_mwu",
    "diff_to_baseline",
    "ratio_to_baseline",
    "ratio_to_oracle",
)
"""Columns of :func:`summarize`'s result, in order (one row per profile × mode × KPI)."""


@dataclass(frozen=True, slots=True)
class MeanCI:
    """Sample mean with the half-width of its confidence interval (``mean ± half_width``)."""

    mean: float
    half_width: float
    n: int
    """Number of values used (NaNs excluded)."""
    n_missing: int
    """Number of NaN values dropped."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two-sided tests and effect sizes of sample ``a`` against reference sample ``b``."""

    p_welch: float
    """Welch's unequal-variance t-test p-value (NaN when undefined)."""
    p_mwu: float
    """Mann-Whitney U p-value (NaN when either sample is empty)."""
    mean_diff: float
    """``mean(a) - mean(b)``."""
    ratio: float
    """``mean(a) / mean(b)`` (NaN when ``mean(b)`` is 0 or undefined)."""


def _finite(values: ArrayLike) -> tuple[np.ndarray, int]:
    """Values as a flat float array without NaNs, and how many NaNs were dropped."""
    arr = np.asarray(values, dtype=float).ravel()
    missing = np.isnan(arr)
    return arr[~missing], int(missing.sum())


def mean_ci(values: ArrayLike, confidence: float = 0.95) -> MeanCI:
    """Mean and t-distribution CI half-width of ``values``, NaNs dropped and counted as missing.

    ``half_width = t_{(1+c)/2, n-1} · s / √n`` with ``s`` the sample standard deviation
    (ddof=1) — the textbook interval for a mean from few repeats with unknown variance.
    With ``n < 2`` the spread is unknown, so the half-width is NaN (and the mean is NaN at n=0).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x, n_missing = _finite(values)
    n = len(x)
    if n == 0:
        return MeanCI(math.nan, math.nan, 0, n_missing)
    mean = float(x.mean())
    if n < 2:
        return MeanCI(mean, math.nan, n, n_missing)
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    t_crit = float(sps.t.ppf((1.0 + confidence) / 2.0, n - 1))
    return MeanCI(mean, t_crit * sem, n, n_missing)


def welch_p_value(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances), NaNs dropped.

    Computed from the formula (Welch 1947; Welch-Satterthwaite degrees of freedom) rather than
    via ``scipy.stats.ttest_ind`` so that degenerate inputs give NaN quietly instead of a
    RuntimeWarning: NaN when either sample has fewer than 2 values or both have zero variance
    (the statistic is undefined there; constant runs are reported, not tested).
    """
    x, _ = _finite(a)
    y, _ = _finite(b)
    nx, ny = len(x), len(y)
    if nx < 2 or ny < 2:
        return math.nan
    vx_n = float(x.var(ddof=1)) / nx
    vy_n = float(y.var(ddof=1)) / ny
    se2 = vx_n + vy_n
    if se2 <= 0.0:
        return math.nan
    t_stat = (float(x.mean()) - float(y.mean())) / math.sqrt(se2)
    df = se2**2 / (vx_n**2 / (nx - 1) + vy_n**2 / (ny - 1))
    return float(min(1.0, 2.0 * sps.t.sf(abs(t_stat), df)))


def mwu_p_value(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided Mann-Whitney U p-value (scipy's exact/asymptotic choice), NaNs dropped.

    NaN when either sample is empty. The rank test complements Welch's t-test: it makes no
    normality assumption, which matters with 5 repeats and skewed KPIs such as p99 latency.
    """
    x, _ = _finite(a)
    y, _ = _finite(b)
    if len(x) == 0 or len(y) == 0:
        return math.nan
    return float(sps.mannwhitneyu(x, y, alternative="two-sided").pvalue)


def _ratio(num: float, den: float) -> float:
    """``num / den``; NaN when either is NaN or ``den`` is 0 (a ratio to nothing is undefined)."""
    if math.isnan(num) or math.isnan(den) or den == 0.0:
        return math.nan
    return num / den


def compare(a: ArrayLike, b: ArrayLike) -> Comparison:
    """Compare sample ``a`` (a mode) with reference ``b`` (the baseline): tests and effect sizes."""
    x, _ = _finite(a)
    y, _ = _finite(b)
    mean_a = float(x.mean()) if len(x) else math.nan
    mean_b = float(y.mean()) if len(y) else math.nan
    return Comparison(
        p_welch=welch_p_value(x, y),
        p_mwu=mwu_p_value(x, y),
        mean_diff=mean_a - mean_b,
        ratio=_ratio(mean_a, mean_b),
    )


def _check_columns(kpis: pd.DataFrame) -> None:
    """Raise ValueError naming every required column ``kpis`` lacks."""
    missing = [c for c in ("mode", "profile", *KPI_NAMES) if c not in kpis.columns]
    if missing:
        raise ValueError(f"kpis is missing column(s): {', '.join(missing)}")


def summarize(
    kpis: pd.DataFrame, baseline_mode: str, oracle_mode: str | None = None
) -> pd.DataFrame:
    """Tidy table per (profile, mode, KPI): mean ± CI, n, missing, tests and ratios.

    ``kpis`` has one row per run (columns ``mode``, ``profile`` and every KPI name; NaN = missing).
    p-values compare each mode with ``baseline_mode`` on the same profile; they are NaN for the
    baseline itself and, like the ratios, when the baseline was not run on that profile (the
    baseline's own ratio is 1 and difference 0 where its mean is defined and non-zero).
    ``ratio_to_oracle`` is filled only for :data:`COST_KPI` (mode cost / oracle cost) when
    ``oracle_mode`` was run. Profiles and modes keep their order of first appearance.
    Columns: :data:`SUMMARY_COLUMNS`.
    """
    _check_columns(kpis)
    rows: list[dict[str, object]] = []
    for profile in pd.unique(kpis["profile"]):
        runs = kpis[kpis["profile"] == profile]
        by_mode = {m: runs[runs["mode"] == m] for m in pd.unique(runs["mode"])}
        base = by_mode.get(baseline_mode)
        oracle = by_mode.get(oracle_mode) if oracle_mode is not None else None
        oracle_cost = mean_ci(oracle[COST_KPI]).mean if oracle is not None else math.nan
        for mode, mode_runs in by_mode.items():
            for kpi in KPI_NAMES:
                spec = KPI_BY_NAME[kpi]
                summary = mean_ci(mode_runs[kpi])
                if mode == baseline_mode:
                    m = summary.mean
                    cmp = Comparison(math.nan, math.nan, m - m, _ratio(m, m))
                elif base is None:
                    cmp = Comparison(math.nan, math.nan, math.nan, math.nan)
                else:
                    cmp = compare(mode_runs[kpi], base[kpi])
                to_oracle = _ratio(summary.mean, oracle_cost) if kpi == COST_KPI else math.nan
                rows.append(
                    {
                        "profile": profile,
                        "mode": mode,
                        "kpi": kpi,
                        "unit": spec.unit,
                        "better": spec.better,
                        "mean": summary.mean,
                        "ci_half": summary.half_width,
                        "n": summary.n,
                        "n_missing": summary.n_missing,
                        "p_welch": cmp.p_welch,
                        "p_mwu": cmp.p_mwu,
                        "diff_to_baseline": cmp.mean_diff,
                        "ratio_to_baseline": cmp.ratio,
                        "ratio_to_oracle": to_oracle,
                    }
                )
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return out.astype({"n": "int64", "n_missing": "int64"})


def significance_marks(p_value: float) -> str:
    """Conventional stars: ``***`` p<0.001, ``**`` p<0.01, ``*`` p<0.05, else ``""`` (NaN too)."""
    if math.isnan(p_value):
        return ""
    for threshold, marks in ((0.001, "***"), (0.01, "**"), (0.05, "*")):
        if p_value < threshold:
            return marks
    return ""
