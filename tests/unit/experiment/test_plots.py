"""Plots: files per profile, valid PNGs, no pyplot state left behind, missing data tolerated."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from ecrl.experiment.plots import display_scale, file_stem, mode_colors, write_plots
from ecrl.experiment.stats import summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_write_plots_writes_a_series_and_a_kpi_png_per_profile(
    tmp_path: Path, synthetic_series: pd.DataFrame, synthetic_kpis: pd.DataFrame
) -> None:
    summary = summarize(synthetic_kpis, "baseline", "oracle")
    paths = write_plots(tmp_path, synthetic_series, summary, slo_p95_s=0.1, oracle_mode="oracle")
    assert [p.name for p in paths] == [
        "00_step_series.png",
        "00_step_kpis.png",
        "01_constant_series.png",
        "01_constant_kpis.png",
    ]
    for p in paths:
        width, height = _png_size(p)
        assert 600 <= width <= 2000 and 400 <= height <= 2000


def test_dpi_sets_the_pixel_size_of_the_figures(
    tmp_path: Path, synthetic_series: pd.DataFrame, synthetic_kpis: pd.DataFrame
) -> None:
    summary = summarize(synthetic_kpis, "baseline", "oracle")
    low = write_plots(tmp_path / "low", synthetic_series, summary, dpi=50)
    high = write_plots(tmp_path / "high", synthetic_series, summary, dpi=100)
    assert _png_size(high[0])[0] == 2 * _png_size(low[0])[0]


def test_plotting_leaves_no_pyplot_figures_open(
    tmp_path: Path, synthetic_series: pd.DataFrame, synthetic_kpis: pd.DataFrame
) -> None:
    before = plt.get_fignums()
    write_plots(tmp_path, synthetic_series, summarize(synthetic_kpis, "baseline", "oracle"))
    assert plt.get_fignums() == before


def test_plots_tolerate_missing_series_values_and_missing_kpis(
    tmp_path: Path, synthetic_series: pd.DataFrame, synthetic_kpis: pd.DataFrame
) -> None:
    series = synthetic_series.copy()
    series.loc[series["mode"] == "rl", ["latency_p95_s", "gpu_util_ratio"]] = math.nan
    kpis = synthetic_kpis.copy()
    kpis.loc[kpis["mode"] == "rl", "latency_p95_s"] = math.nan
    summary = summarize(kpis, "baseline", "oracle")
    paths = write_plots(tmp_path, series, summary, slo_p95_s=0.1, oracle_mode="oracle")
    assert len(paths) == 4
    assert all(p.stat().st_size > 0 for p in paths)


def test_profile_without_series_gets_only_its_kpi_bars(
    tmp_path: Path, synthetic_series: pd.DataFrame, synthetic_kpis: pd.DataFrame
) -> None:
    series = synthetic_series[synthetic_series["profile"] == "step"]
    paths = write_plots(tmp_path, series, summarize(synthetic_kpis, "baseline"))
    assert [p.name for p in paths] == ["00_step_series.png", "00_step_kpis.png", "01_constant_kpis.png"]


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
