"""Report: every file written, self-contained HTML, KPI tables, data round trips, terminal table."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from ecrl.experiment.kpis import KPI_NAMES
from ecrl.experiment.report import (
    ReportFiles,
    format_kpi_table,
    format_mean_ci,
    format_p,
    write_report,
)
from ecrl.experiment.stats import COST_KPI, summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(
    tmp_path_factory: pytest.TempPathFactory,
    synthetic_kpis: pd.DataFrame,
    synthetic_series: pd.DataFrame,
    meta: dict[str, object],
) -> ReportFiles:
    """One report of the synthetic runs, written once and only read by tests (plots are slow)."""
    return write_report(tmp_path_factory.mktemp("report"), synthetic_kpis, synthetic_series, meta)


def _hand_kpis() -> pd.DataFrame:
    """Baseline cost 100, 102, 98, 100, 100 (mean 100, s = √2); oracle cost 50 in every run."""
    rows = []
    for mode, costs in (("baseline", [100.0, 102.0, 98.0, 100.0, 100.0]), ("oracle", [50.0] * 5)):
        for repeat, cost in enumerate(costs):
            row: dict[str, object] = {
                "mode": mode,
                "profile": "flat",
                "repeat": repeat,
                "seed": repeat,
            }
            row.update(dict.fromkeys(KPI_NAMES, 1.0))
            row[COST_KPI] = cost
            rows.append(row)
    return pd.DataFrame(rows)


# --- formatting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ((100.0, 1.756, 5, 0), "100 ± 2"),
        ((0.0123, 0.0011, 5, 0), "0.0123 ± 0.0011"),
        ((0.0853, 0.0042, 5, 0, 1000.0), "85.3 ± 4.2"),
        ((12.34, 0.5, 3, 2), "12.3 ± 0.5 (n=3/5)"),
        ((7.0, math.nan, 1, 4), "7.00 ± n/a (n=1/5)"),
        ((math.nan, math.nan, 0, 5), "missing"),
    ],
)
def test_format_mean_ci_shows_three_digits_missing_and_partial_counts(
    args: tuple[float, ...], text: str
) -> None:
    assert format_mean_ci(*args) == text  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("p", "text"),
    [
        (0.0001, "<0.001 ***"),
        (0.0042, "0.004 **"),
        (0.03, "0.030 *"),
        (0.2, "0.200"),
        (math.nan, "—"),
    ],
)
def test_format_p_appends_significance_marks(p: float, text: str) -> None:
    assert format_p(p) == text


# --- files ---------------------------------------------------------------------------------------


def test_write_report_writes_every_file(report: ReportFiles) -> None:
    out = report.markdown.parent
    for name in (
        "report.md",
        "report.html",
        "kpis.csv",
        "kpis.parquet",
        "series.parquet",
        "series.csv.gz",
        "summary.csv",
    ):
        assert (out / name).stat().st_size > 0, name
    assert len(report.plots) == 4
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in report.plots)


def test_html_report_embeds_every_plot_and_loads_nothing_external(report: ReportFiles) -> None:
    page = report.html.read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(report.plots)
    assert base64.b64decode(images[0]) == report.plots[0].read_bytes()
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_markdown_report_links_plots_that_exist(report: ReportFiles) -> None:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.markdown.read_text(encoding="utf-8"))
    assert len(links) == len(report.plots)
    assert all((report.markdown.parent / link).is_file() for link in links)


def test_kpis_csv_and_parquet_round_trip_exactly(
    report: ReportFiles, synthetic_kpis: pd.DataFrame
) -> None:
    pd.testing.assert_frame_equal(pd.read_csv(report.kpis_csv), synthetic_kpis, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(report.kpis_parquet), synthetic_kpis)
    assert pd.read_csv(report.kpis_csv)["reaction_time_s"].isna().sum() == 3 * 5 + 2


def test_series_parquet_and_csv_gz_round_trip(
    report: ReportFiles, synthetic_series: pd.DataFrame
) -> None:
    pd.testing.assert_frame_equal(pd.read_parquet(report.series_parquet), synthetic_series)
    pd.testing.assert_frame_equal(
        pd.read_csv(report.series_csv_gz), synthetic_series, check_exact=True
    )


def test_summary_csv_holds_the_summarize_table(
    report: ReportFiles, synthetic_kpis: pd.DataFrame
) -> None:
    expected = summarize(synthetic_kpis, "baseline", "oracle")
    pd.testing.assert_frame_equal(pd.read_csv(report.summary_csv), expected, check_exact=True)


# --- content -------------------------------------------------------------------------------------


def test_report_header_says_what_was_run(report: ReportFiles) -> None:
    for page in (report.markdown.read_text(), report.html.read_text()):
        for text in ("cafe1234", "1000, 1001, 1002", "twin", "rtx3080-mobilenetv4", "100 ms"):
            assert text in page
        assert "2025-01-02T03:04:05Z" in page


def test_report_kpi_table_shows_mean_ci_with_units_and_missing_counts(
    report: ReportFiles, synthetic_kpis: pd.DataFrame
) -> None:
    summary = summarize(synthetic_kpis, "baseline", "oracle")
    r = summary[(summary["profile"] == "step") & (summary["mode"] == "rl")]
    p95 = r[r["kpi"] == "latency_p95_s"].iloc[0]
    cell = format_mean_ci(p95["mean"], p95["ci_half"], 5, 0, 1000.0)
    md = report.markdown.read_text(encoding="utf-8")
    page = report.html.read_text(encoding="utf-8")
    assert "| Latency p95 (ms) ↓ | " in md and cell in md
    assert "<td>Latency p95 (ms) ↓</td>" in page and f"<td>{cell}</td>" in page
    assert re.search(r"Time to react to a load step \(s\) ↓ \| [^|]+ \| [^|]+\(n=3/5\)", md)
    constant = md[md.index("### Profile: constant") :]
    assert re.search(
        r"Time to react to a load step \(s\) ↓ \| missing \| missing \| missing", constant
    )


def test_report_shows_p_values_vs_baseline_with_marks(
    report: ReportFiles, synthetic_kpis: pd.DataFrame
) -> None:
    summary = summarize(synthetic_kpis, "baseline", "oracle")
    row = summary[
        (summary["profile"] == "step")
        & (summary["mode"] == "oracle")
        & (summary["kpi"] == COST_KPI)
    ].iloc[0]
    md = report.markdown.read_text(encoding="utf-8")
    assert f"Welch {format_p(row['p_welch'])} · MWU {format_p(row['p_mwu'])}" in md
    assert "*" in format_p(row["p_welch"])


def test_hand_computed_cost_floor_row(tmp_path: Path) -> None:
    # Baseline: mean 100, half-width 2.776·√2/√5 = 1.76 → "100 ± 2"; ratio to oracle 100/50 = 2.
    files = write_report(tmp_path, _hand_kpis(), pd.DataFrame(columns=["mode", "profile"]), {})
    md = files.markdown.read_text(encoding="utf-8")
    floor = md[md.index("## Cost floor") : md.index("## Plots")]
    assert "| baseline | 100 ± 2 (×2.00) |" in floor
    assert "| oracle (floor) | 50.0 ± 0.0 (×1.00) |" in floor


def test_report_without_oracle_says_there_is_no_cost_floor(
    tmp_path: Path, synthetic_kpis: pd.DataFrame, synthetic_series: pd.DataFrame
) -> None:
    kpis = synthetic_kpis.query("mode != 'oracle' and profile == 'step'")
    series = synthetic_series.query("mode != 'oracle' and profile == 'step'")
    files = write_report(tmp_path, kpis, series, {"slo_p95_s": 0.1})
    assert "No oracle mode was run" in files.markdown.read_text(encoding="utf-8")


def test_report_explains_how_to_read_it(report: ReportFiles) -> None:
    md = report.markdown.read_text(encoding="utf-8")
    how = md[md.index("## How to read") :]
    for text in ("95 % confidence interval", "Student's t", "Welch", "Mann-Whitney", "missing"):
        assert text in how
    assert all(label in how for label in ("Latency p95 (ms)", "Cost (GPU-replica-seconds)"))


# --- terminal table ------------------------------------------------------------------------------


def test_terminal_table_lists_every_mode_and_fits_120_columns(synthetic_kpis: pd.DataFrame) -> None:
    text = format_kpi_table(summarize(synthetic_kpis, "baseline", "oracle"))
    assert max(len(line) for line in text.splitlines()) <= 120
    assert text.count("profile: ") == 2
    for header in (
        "p95 (ms)",
        "SLO viol. (%)",
        "throughput (req/s)",
        "cost (replica·s)",
        "cost/oracle",
    ):
        assert header in text
    rows = [
        line.split()[0]
        for line in text.splitlines()
        if line.startswith(("baseline", "rl", "oracle"))
    ]
    assert rows == ["baseline", "rl", "oracle"] * 2


def test_terminal_table_shows_cost_ratio_to_the_oracle() -> None:
    text = format_kpi_table(summarize(_hand_kpis(), "baseline", "oracle"), profile="flat")
    baseline_line = next(line for line in text.splitlines() if line.startswith("baseline"))
    assert "100 ± 2" in baseline_line and "×2.00" in baseline_line


def test_terminal_table_for_one_profile_and_unknown_profile(synthetic_kpis: pd.DataFrame) -> None:
    summary = summarize(synthetic_kpis, "baseline", "oracle")
    assert format_kpi_table(summary, profile="constant").count("profile: ") == 1
    with pytest.raises(ValueError, match="nope"):
        format_kpi_table(summary, profile="nope")
