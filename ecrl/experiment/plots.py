"""Figures of an experiment: time series per profile and KPI bar charts with 95 % CI whiskers.

Figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas — never through
``pyplot`` — so plotting leaves no global figure state behind and works headless (CI, containers).
Each figure is saved at a modest dpi and released at once; a demo with 5 profiles × 6 modes stays
within a few seconds.

Display units: latencies in ms and ratios in % (:func:`display_scale`), shared with the report so
the tables and the axes read the same.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from ecrl.experiment.kpis import KPI_BY_NAME, KPI_NAMES
from ecrl.experiment.stats import COST_KPI, significance_marks

DEFAULT_DPI = 100
"""Resolution of saved PNGs: legible on screen and small enough to embed in the HTML report."""

_TAB10 = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
"""matplotlib's default 'tab10' cycle, listed so a mode keeps its colour in every figure."""

_USERS_COLOR = "#9a9a9a"


def display_scale(name: str) -> tuple[float, str]:
    """Factor and unit to show a KPI or series column in: latencies in ms, ratios in %.

    Values are stored in base units (seconds, ratios; STYLE.md item 6); people read ms and %.
    """
    if name.startswith("latency_"):
        return 1000.0, "ms"
    spec = KPI_BY_NAME.get(name)
    if name.endswith("_ratio") or (spec is not None and spec.unit == "ratio"):
        return 100.0, "%"
    return 1.0, spec.unit if spec is not None else ""


def mode_colors(modes: Iterable[str]) -> dict[str, str]:
    """A fixed colour per mode, in order, so the same mode looks the same in every figure."""
    return {m: _TAB10[i % len(_TAB10)] for i, m in enumerate(dict.fromkeys(modes))}


def file_stem(index: int, profile: str) -> str:
    """Safe, unique file-name stem for a profile (trace names may hold '/', ':' or spaces)."""
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', profile).strip('_') or 'profile'}"


def _finite_max(values: np.ndarray) -> float:
    """Largest finite value, or 0 when there is none (no all-NaN RuntimeWarning)."""
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 0.0


def _new_figure(width_in: float, height_in: float, dpi: int) -> Figure:
    """A figure bound to an Agg canvas, outside pyplot's registry (nothing to leak)."""
    fig = Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG and drop its artists so memory is freed before the next figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    fig.clear()
    return path


def _band(
    ax: Axes, agg: pd.DataFrame, column: str, *, scale: float, color: str, label: str
) -> None:
    """Mean line with a min–max band across repeats for one mode."""
    t = agg.index.to_numpy(dtype=float)
    ax.fill_between(
        t, agg[(column, "min")] * scale, agg[(column, "max")] * scale, color=color, alpha=0.18, lw=0
    )
    ax.plot(t, agg[(column, "mean")] * scale, color=color, lw=1.3, label=label)


def _users_twin(ax: Axes, users: pd.Series) -> None:
    """Offered users as a grey area on a right-hand axis, drawn behind the mode lines."""
    twin = ax.twinx()
    t = users.index.to_numpy(dtype=float)
    twin.fill_between(
        t, 0, users.to_numpy(dtype=float), step="post", color=_USERS_COLOR, alpha=0.15
    )
    twin.step(t, users.to_numpy(dtype=float), where="post", color=_USERS_COLOR, lw=0.8)
    twin.set_ylabel("offered users", color=_USERS_COLOR)
    twin.tick_params(axis="y", colors=_USERS_COLOR)
    twin.set_ylim(bottom=0)
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)


def plot_profile_series(
    series: pd.DataFrame,
    profile: str,
    path: Path,
    *,
    colors: Mapping[str, str],
    slo_p95_s: float | None = None,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """p95 latency (with the SLO), ready replicas and GPU utilization over time for one profile.

    Each mode is drawn as the mean across repeats with a min–max band, so run-to-run spread is
    visible; offered users sit on a twin axis of every panel to relate reactions to the load.
    Latency uses a log axis: overload spikes span orders of magnitude and would hide the SLO.
    """
    runs = series[series["profile"] == profile]
    panels = (
        ("latency_p95_s", "p95 latency (ms)"),
        ("replicas_ready", "ready replicas"),
        ("gpu_util_ratio", "GPU utilization (%)"),
    )
    cols = [c for c, _ in panels]
    agg = runs.groupby(["mode", "time_s"], sort=True)[cols].agg(["mean", "min", "max"])
    users = runs.groupby("time_s", sort=True)["users"].mean()
    fig = _new_figure(10.0, 8.5, dpi)
    axes = fig.subplots(len(panels), 1, sharex=True)
    for ax, (column, ylabel) in zip(axes, panels, strict=True):
        scale, _ = display_scale(column)
        for mode in pd.unique(runs["mode"]):
            _band(ax, agg.loc[mode], column, scale=scale, color=colors[mode], label=str(mode))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        _users_twin(ax, users)
    lat_ax = axes[0]
    if _finite_max(runs["latency_p95_s"].to_numpy(dtype=float)) > 0:
        lat_ax.set_yscale("log")
        # Plain numbers ("200", not "2×10²") on the decades and, when the range is short, between.
        lat_ax.yaxis.set_major_formatter(LogFormatter())
        lat_ax.yaxis.set_minor_formatter(
            LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))
        )
    if slo_p95_s is not None and not math.isnan(slo_p95_s):
        lat_ax.axhline(slo_p95_s * 1000.0, color="black", ls="--", lw=1.2, label="SLO")
    axes[1].set_ylim(bottom=0)
    axes[2].set_ylim(0, 105)
    axes[-1].set_xlabel("time (s)")
    lat_ax.legend(loc="upper left", ncol=4, fontsize="small", framealpha=0.85)
    fig.suptitle(f"{profile}: mean across repeats, band = min–max")
    return _save(fig, path)


def _kpi_panel(
    ax: Axes, rows: pd.DataFrame, kpi: str, colors: Mapping[str, str], oracle_mode: str | None
) -> None:
    """Bars of one KPI per mode with CI whiskers, Welch marks vs baseline and the oracle marked."""
    spec = KPI_BY_NAME[kpi]
    scale, unit = display_scale(kpi)
    modes = rows["mode"].tolist()
    x = np.arange(len(modes))
    means = rows["mean"].to_numpy(dtype=float) * scale
    halves = rows["ci_half"].to_numpy(dtype=float) * scale
    bars = ax.bar(x, np.nan_to_num(means), color=[colors[m] for m in modes], alpha=0.85)
    for i, mode in enumerate(modes):
        if mode == oracle_mode:
            bars[i].set_hatch("//")
            bars[i].set_edgecolor("black")
    ok = ~np.isnan(halves) & ~np.isnan(means)
    ax.errorbar(x[ok], means[ok], yerr=halves[ok], fmt="none", ecolor="black", capsize=3, lw=1)
    top = _finite_max(np.where(ok, means + halves, means)) or 1.0
    for i, (mean, p) in enumerate(zip(means, rows["p_welch"], strict=True)):
        if np.isnan(mean):
            ax.text(i, top * 0.05, "missing", rotation=90, ha="center", va="bottom", fontsize=8)
            continue
        marks = significance_marks(float(p))
        if marks:
            ax.text(i, (mean + (halves[i] if ok[i] else 0.0)), marks, ha="center", va="bottom")
    if kpi == COST_KPI and oracle_mode in modes:
        floor = means[modes.index(oracle_mode)]
        if not np.isnan(floor):
            ax.axhline(floor, color="black", ls="--", lw=1, label="oracle floor")
            ax.legend(loc="lower right", fontsize="x-small")
    arrow = "↓" if spec.better == "lower" else "↑"
    ax.set_title(f"{spec.label} ({unit}) {arrow} better", fontsize=9)
    ax.set_xticks(x, modes, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, top * 1.15)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_profile_kpis(
    summary: pd.DataFrame,
    profile: str,
    path: Path,
    *,
    colors: Mapping[str, str],
    oracle_mode: str | None = None,
    kpis: Sequence[str] = KPI_NAMES,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """One bar panel per KPI: mean per mode with 95 % CI whiskers, for one profile.

    Stars above a bar mark Welch p-values vs the baseline; the oracle bar is hatched (it is a
    clairvoyant bound, not a deployable mode) and its cost is drawn as the floor line.
    """
    rows = summary[summary["profile"] == profile]
    ncols = 4
    nrows = math.ceil(len(kpis) / ncols)
    fig = _new_figure(14.0, 2.9 * nrows + 0.5, dpi)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, kpi in zip(axes, kpis, strict=False):
        _kpi_panel(ax, rows[rows["kpi"] == kpi], kpi, colors, oracle_mode)
    for ax in axes[len(kpis) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"{profile}: KPI mean ± 95 % CI (* p<0.05, ** p<0.01, *** p<0.001 Welch vs baseline)"
    )
    return _save(fig, path)


def write_plots(
    out_dir: str | Path,
    series: pd.DataFrame,
    summary: pd.DataFrame,
    *,
    slo_p95_s: float | None = None,
    oracle_mode: str | None = None,
    dpi: int = DEFAULT_DPI,
) -> list[Path]:
    """Write every figure (per profile: time series, then KPI bars) and return the PNG paths.

    ``series`` is long (``mode``, ``profile``, ``repeat`` + SERIES_COLUMNS); ``summary`` is
    :func:`ecrl.experiment.stats.summarize`'s table. A profile without series gets only its bars.
    """
    out = Path(out_dir)
    profiles = list(dict.fromkeys([*pd.unique(summary["profile"]), *pd.unique(series["profile"])]))
    colors = mode_colors([*pd.unique(summary["mode"]), *pd.unique(series["mode"])])
    with_series = set(pd.unique(series["profile"]))
    paths: list[Path] = []
    for i, profile in enumerate(profiles):
        stem = file_stem(i, str(profile))
        if profile in with_series:
            paths.append(
                plot_profile_series(
                    series,
                    profile,
                    out / f"{stem}_series.png",
                    colors=colors,
                    slo_p95_s=slo_p95_s,
                    dpi=dpi,
                )
            )
        if (summary["profile"] == profile).any():
            paths.append(
                plot_profile_kpis(
                    summary,
                    profile,
                    out / f"{stem}_kpis.png",
                    colors=colors,
                    oracle_mode=oracle_mode,
                    dpi=dpi,
                )
            )
    return paths
