"""Plots: files per profile, valid PNGs, no pyplot state left behind, missing data tolerated."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from ecrl.experiment.plots import (
    display_scale,
    file_stem,
    mode_colors,
    plot_profile_series,
    write_plots,
)
from ecrl.experiment.stats import COST_KPI, summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.fixture(scope="module")
def written(
    tmp_path_factory: pytest.TempPathFactory,
    synthetic_series: pd.DataFrame,
    synthetic_kpis: pd.DataFrame,
) -> tuple[list[Path], list[int], list[int]]:
    """Plots of the synthetic runs, written once, with pyplot's open figures before and after."""
    summary = summarize(synthetic_kpis, "baseline", "oracle")
    before = plt.get_fignums()
    paths = write_plots(
        tmp_path_factory.mktemp("plots"),
        synthetic_series,
        summary,
        slo_p95_s=0.1,
        oracle_mode="oracle",
    )
    return paths, before, plt.get_fignums()


def test_write_plots_writes_a_series_and_a_kpi_png_per_profile(
    written: tuple[list[Path], list[int], list[int]],
) -> None:
    paths, _, _ = written
    assert [p.name for p in paths] == [
        "00_step_series.png",
        "00_step_kpis.png",
        "01_constant_series.png",
        "01_constant_kpis.png",
    ]
    for p in paths:
        width, height = _png_size(p)
        assert 600 <= width <= 2000 and 400 <= height <= 2000


def test_plotting_leaves_no_pyplot_figures_open(
    written: tuple[list[Path], list[int], list[int]],
) -> None:
    _, before, after = written
    assert after == before


def test_dpi_sets_the_pixel_size_of_the_figures(
    tmp_path: Path, synthetic_series: pd.DataFrame
) -> None:
    colors = mode_colors(synthetic_series["mode"])
    low = plot_profile_series(synthetic_series, "step", tmp_path / "low.png", colors=colors, dpi=50)
    high = plot_profile_series(
        synthetic_series, "step", tmp_path / "high.png", colors=colors, dpi=100
    )
    assert _png_size(high) == (2 * _png_size(low)[0], 2 * _png_size(low)[1])


def test_plots_tolerate_missing_series_values_and_missing_kpis(
    tmp_path: Path, synthetic_series: pd.DataFrame, synthetic_kpis: pd.DataFrame
) -> None:
    series = synthetic_series[synthetic_series["profile"] == "step"].copy()
    series.loc[series["mode"] == "rl", ["latency_p95_s", "gpu_util_ratio"]] = math.nan
    series.loc[series["time_s"] < 10, "replicas_ready"] = math.nan
    kpis = synthetic_kpis[synthetic_kpis["profile"] == "step"].copy()
    kpis.loc[kpis["mode"] == "rl", "latency_p95_s"] = math.nan
    kpis.loc[kpis["mode"] == "oracle", COST_KPI] = math.nan
    summary = summarize(kpis, "baseline", "oracle")
    paths = write_plots(tmp_path, series, summary, slo_p95_s=0.1, oracle_mode="oracle")
    assert len(paths) == 2
    assert all(p.stat().st_size > 0 for p in paths)


def test_profile_without_series_gets_only_its_kpi_bars(
    tmp_path: Path, synthetic_series: pd.DataFrame, synthetic_kpis: pd.DataFrame
) -> None:
    series = synthetic_series[synthetic_series["profile"] == "step"]
    paths = write_plots(tmp_path, series, summarize(synthetic_kpis, "baseline"))
    assert [p.name for p in paths] == [
        "00_step_series.png",
        "00_step_kpis.png",
        "01_constant_kpis.png",
    ]


@pytest.mark.parametrize(
    ("name", "factor", "unit"),
    [
        ("latency_p95_s", 1000.0, "ms"),
        ("slo_violation_ratio", 100.0, "%"),
        ("gpu_util_ratio", 100.0, "%"),
        ("gpu_replica_seconds", 1.0, "replica·s"),
        ("reaction_time_s", 1.0, "s"),
    ],
)
def test_display_scale_shows_latency_in_ms_and_ratios_in_percent(
    name: str, factor: float, unit: str
) -> None:
    assert display_scale(name) == (factor, unit)


def test_mode_colors_are_distinct_and_stable_in_order() -> None:
    colors = mode_colors(["baseline", "rl", "oracle", "rl"])
    assert list(colors) == ["baseline", "rl", "oracle"]
    assert len(set(colors.values())) == 3
    assert mode_colors(["baseline", "rl"])["rl"] == colors["rl"]


def test_file_stem_makes_trace_names_safe_for_file_names() -> None:
    assert file_stem(3, "trace:/data/prod week 1.csv") == "03_trace_data_prod_week_1.csv"
    assert file_stem(0, "///") == "00_profile"
