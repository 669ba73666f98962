"""The experiment report: Markdown + self-contained HTML, raw data files and a terminal table.

The report is built once as a list of plain blocks (heading, paragraph, list, table, image) and
rendered twice — to Markdown (images linked) and to HTML (images embedded as base64, so the one
file can be mailed or attached to a paper review). Numbers come only from
:func:`ecrl.experiment.stats.summarize`; nothing is typed in by hand.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ecrl.experiment.kpis import KPI_BY_NAME, KPI_NAMES
from ecrl.experiment.plots import display_scale, write_plots
from ecrl.experiment.stats import COST_KPI, significance_marks, summarize
from ecrl.experiment.targets import check_targets, per_shape_rows

_META_FIELDS: tuple[tuple[str, str], ...] = (
    ("modes", "Modes"),
    ("profiles", "Load profiles"),
    ("repeats", "Repeats per mode × profile"),
    ("seeds", "Seeds"),
    ("config_hash", "Config hash"),
    ("backend", "Backend"),
    ("twin_profile", "Twin profile"),
    ("slo_p95_s", "SLO (p95 latency)"),
    ("baseline_mode", "Baseline mode"),
    ("oracle_mode", "Oracle mode"),
    ("date", "Date"),
)
"""Meta keys shown first in the header, with their labels; any other key follows as is."""

_KPI_DEFINITIONS: dict[str, str] = {
    "latency_avg_s": "mean latency of served requests, weighted by throughput",
    "latency_p95_s": "95th percentile of latency over the whole run, from the summed histogram",
    "latency_p99_s": "99th percentile of latency over the whole run, from the summed histogram",
    "throughput_rps": "served requests per second over the run",
    "success_ratio": "served / (served + failed) requests",
    "slo_violation_ratio": "fraction of seconds with p95 above the SLO or any failed request",
    "gpu_util_ratio": "mean GPU utilization",
    "cpu_util_ratio": "mean CPU usage relative to the pods' CPU request",
    "memory_util_ratio": "mean memory usage relative to the pods' memory request",
    "gpu_replica_seconds": "sum over seconds of replicas holding a GPU (cost)",
    "replicas_mean": "mean number of ready replicas",
    "scaling_actions_per_hour": "changes of replicas, batching, instances or resources per hour",
    "replica_actions_per_hour": "changes of the replica count per hour (all an HPA can change)",
    "reaction_time_s": "mean time from an upward load step until p95 stays within the SLO",
}
"""One line per KPI for "How to read"; the computation lives in ``ecrl.experiment.kpis``."""

_TERMINAL_KPIS: tuple[tuple[str, str], ...] = (
    ("latency_p95_s", "p95"),
    ("slo_violation_ratio", "SLO viol."),
    ("throughput_rps", "throughput"),
    (COST_KPI, "cost"),
    ("scaling_actions_per_hour", "actions"),
)

Block = tuple[Any, ...]
"""A report element: ("h", level, text) | ("p", text) | ("ul", items) | ("table", head, rows)
| ("img", path, alt)."""


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """Paths of everything :func:`write_report` wrote."""

    markdown: Path
    html: Path
    kpis_csv: Path
    kpis_parquet: Path
    series_parquet: Path
    series_csv_gz: Path
    summary_csv: Path
    plots: tuple[Path, ...]


def _decimals(ref: float) -> int:
    """Decimals giving about 3 significant digits for ``ref`` (0..4)."""
    if not math.isfinite(ref) or ref == 0.0:
        return 1
    return min(4, max(0, 2 - math.floor(math.log10(abs(ref)))))


def format_mean_ci(mean: float, half: float, n: int, n_missing: int, scale: float = 1.0) -> str:
    """``"12.3 ± 0.4"``; ``"missing"`` at n=0; ``"(n=k/N)"`` appended when some runs lack it."""
    if n == 0:
        return "missing"
    d = _decimals(mean * scale)
    half_txt = "n/a" if math.isnan(half) else f"{half * scale:.{d}f}"
    text = f"{mean * scale:.{d}f} ± {half_txt}"
    return f"{text} (n={n}/{n + n_missing})" if n_missing else text


def format_p(p: float) -> str:
    """p-value with its significance marks: ``"0.003 **"``, ``"<0.001 ***"``, ``"—"`` for NaN."""
    if math.isnan(p):
        return "—"
    text = "<0.001" if p < 0.001 else f"{p:.3f}"
    marks = significance_marks(p)
    return f"{text} {marks}" if marks else text


def _ratio_text(ratio: float) -> str:
    """``"×1.35"``, or ``"—"`` where the ratio is undefined."""
    return "—" if math.isnan(ratio) else f"×{ratio:.2f}"


def _meta_value(key: str, value: Any) -> str:
    """One meta value as text: the SLO in ms, lists joined by commas."""
    if key == "slo_p95_s" and isinstance(value, int | float):
        return f"{value * 1000:g} ms"
    if isinstance(value, list | tuple | set):
        return ", ".join(str(v) for v in value)
    return str(value)


def _header_blocks(meta: Mapping[str, Any]) -> list[Block]:
    """Title and the "What was run" table: known meta keys first, then any others as given."""
    known = dict(_META_FIELDS)
    rows = [[label, _meta_value(k, meta[k])] for k, label in _META_FIELDS if k in meta]
    rows += [[k, _meta_value(k, v)] for k, v in meta.items() if k not in known]
    return [
        ("h", 1, "ECRL experiment report"),
        ("h", 2, "What was run"),
        ("table", ["field", "value"], rows),
    ]


def _kpi_label(kpi: str) -> str:
    """Row label with display unit and direction, e.g. ``"Latency p95 (ms) ↓"``."""
    spec = KPI_BY_NAME[kpi]
    _, unit = display_scale(kpi)
    return f"{spec.label} ({unit}) {'↓' if spec.better == 'lower' else '↑'}"


def _profile_blocks(summary: pd.DataFrame, profile: str, baseline_mode: str) -> list[Block]:
    """KPI table (mean ± CI per mode) and the vs-baseline table for one profile."""
    rows = summary[summary["profile"] == profile]
    modes = list(pd.unique(rows["mode"]))
    cell = {(r.mode, r.kpi): r for r in rows.itertuples(index=False)}
    kpi_rows = []
    for kpi in KPI_NAMES:
        scale, _ = display_scale(kpi)
        cells = [
            format_mean_ci(c.mean, c.ci_half, c.n, c.n_missing, scale)
            for c in (cell[(m, kpi)] for m in modes)
        ]
        kpi_rows.append([_kpi_label(kpi), *cells])
    blocks: list[Block] = [
        ("h", 3, f"Profile: {profile}"),
        ("table", ["KPI", *modes], kpi_rows),
    ]
    others = [m for m in modes if m != baseline_mode]
    if baseline_mode not in modes or not others:
        blocks.append(("p", f"No comparison: baseline mode '{baseline_mode}' has no peer here."))
        return blocks
    cmp_rows = []
    for kpi in KPI_NAMES:
        cells = []
        for m in others:
            c = cell[(m, kpi)]
            ratio = _ratio_text(c.ratio_to_baseline)
            cells.append(f"{ratio} · Welch {format_p(c.p_welch)} · MWU {format_p(c.p_mwu)}")
        cmp_rows.append([_kpi_label(kpi), *cells])
    blocks += [
        ("p", f"Versus baseline '{baseline_mode}': mean ratio, Welch and Mann-Whitney U p-values."),
        ("table", ["KPI", *others], cmp_rows),
    ]
    return blocks


def _cost_floor_blocks(summary: pd.DataFrame, oracle_mode: str | None) -> list[Block]:
    """GPU-replica-seconds per mode and profile with the ratio to the oracle's (the floor)."""
    blocks: list[Block] = [("h", 2, "Cost floor")]
    cost = summary[summary["kpi"] == COST_KPI]
    if oracle_mode is None or not (cost["mode"] == oracle_mode).any():
        blocks.append(("p", "No oracle mode was run, so there is no cost floor to compare with."))
        return blocks
    blocks.append(
        (
            "p",
            f"The oracle ('{oracle_mode}') knows the future load; its GPU-replica-seconds are the "
            "lowest cost that meets the SLO in the twin. Each cell: cost mean ± 95 % CI "
            "(replica·s) and ×ratio to the oracle's mean.",
        )
    )
    profiles = list(pd.unique(cost["profile"]))
    cell = {(r.mode, r.profile): r for r in cost.itertuples(index=False)}
    rows = []
    for mode in pd.unique(cost["mode"]):
        cells = []
        for p in profiles:
            c = cell.get((mode, p))
            if c is None:
                cells.append("not run")
                continue
            value = format_mean_ci(c.mean, c.ci_half, c.n, c.n_missing)
            cells.append(f"{value} ({_ratio_text(c.ratio_to_oracle)})")
        rows.append([f"{mode} (floor)" if mode == oracle_mode else str(mode), *cells])
    blocks.append(("table", ["mode", *profiles], rows))
    return blocks


def _target_blocks(kpis: pd.DataFrame, meta: Mapping[str, Any]) -> list[Block]:
    """The learned policy's targets, met or missed, with per-profile means behind them."""
    rl_mode = str(meta.get("rl_mode", "rl"))
    baseline = str(meta.get("baseline_mode", "baseline"))
    oracle = meta.get("oracle_mode")
    targets = check_targets(kpis, rl_mode, oracle, baseline)
    if not targets:
        return []
    modes = [m for m in (rl_mode, oracle, baseline) if m] + [
        m for m in pd.unique(kpis["mode"]) if m not in (rl_mode, oracle, baseline)
    ]
    head, rows = per_shape_rows(kpis, modes)
    return [
        ("h", 2, f"Targets of the learned policy ('{rl_mode}')"),
        (
            "p",
            "Pooled over every profile and repeat of this report (means of the per-run KPIs). "
            "A missed target is reported as missed; the runs are not re-selected or tuned.",
        ),
        ("ul", [t.text() for t in targets]),
        ("table", head, rows),
    ]


def _how_to_read() -> list[Block]:
    """Definitions a reader needs to interpret the tables and plots without the code."""
    items = [
        "mean ± CI: mean over the N repeats of a mode on a profile; ± is the half-width of the "
        "95 % confidence interval from Student's t distribution with N−1 degrees of freedom "
        "(t·s/√N). 'n/a' means only one run had a value, so no interval exists.",
        "missing: no run measured the KPI (e.g. time to react on a profile without a load step). "
        "(n=k/N): only k of N runs had a value; the others are left out, never filled in.",
        "p-values compare a mode with the baseline on the same profile: Welch's t-test (unequal "
        "variances) and the two-sided Mann-Whitney U test (ranks, no normality assumption). "
        "* p<0.05, ** p<0.01, *** p<0.001. They are not corrected for multiple comparisons, and "
        "with few repeats the rank test cannot reach small p (at best 2/C(n₁+n₂, n₁)).",
        "×r: the mode's mean divided by the baseline's (or, under Cost floor, the oracle's). "
        "↓ lower is better, ↑ higher is better. '—': not defined (e.g. constant runs).",
        "Plots: lines are means across repeats, bands span min–max; the dashed line is the SLO; "
        "grey area = offered users (right axis). Bars carry 95 % CI whiskers; the hatched bar is "
        "the oracle, a clairvoyant bound rather than a deployable mode.",
        *(f"{_kpi_label(k)}: {_KPI_DEFINITIONS[k]}." for k in KPI_NAMES),
    ]
    return [("h", 2, "How to read"), ("ul", items)]


def _md_cell(text: str) -> str:
    """Text safe inside a Markdown table cell (escaped pipes, no newlines)."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    """Markdown for the blocks; images are relative links."""
    out: list[str] = []
    for b in blocks:
        if b[0] == "h":
            out.append(f"{'#' * b[1]} {b[2]}")
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "ul":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif b[0] == "table":
            lines = ["| " + " | ".join(_md_cell(h) for h in b[1]) + " |"]
            lines.append("|" + "|".join("---" for _ in b[1]) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b[2]]
            out.append("\n".join(lines))
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(out) + "\n"


def render_html(blocks: Sequence[Block], base_dir: Path) -> str:
    """Self-contained HTML for the blocks; images (relative to ``base_dir``) embedded as base64."""
    esc = html.escape
    body: list[str] = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{esc(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{esc(b[1])}</p>")
        elif b[0] == "ul":
            body.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in b[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in b[2]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode((base_dir / b[1]).read_bytes()).decode("ascii")
            body.append(f'<img alt="{esc(b[2])}" src="data:image/png;base64,{data}">')
    style = (
        "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
        "th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>ECRL experiment report</title><style>{style}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(
    out_dir: str | Path, kpis: pd.DataFrame, series: pd.DataFrame, meta: Mapping[str, Any]
) -> ReportFiles:
    """Write the report (Markdown, HTML), plots and raw data (CSV/Parquet) under ``out_dir``.

    ``meta`` describes the run (see ``_META_FIELDS``); ``baseline_mode`` defaults to "baseline",
    ``oracle_mode`` to "oracle" when such runs exist, ``slo_p95_s`` draws the SLO line.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    baseline_mode = str(meta.get("baseline_mode", "baseline"))
    oracle_mode = meta.get("oracle_mode", "oracle" if (kpis["mode"] == "oracle").any() else None)
    summary = summarize(kpis, baseline_mode, oracle_mode)
    slo = meta.get("slo_p95_s")
    plots = write_plots(out / "plots", series, summary, slo_p95_s=slo, oracle_mode=oracle_mode)
    files = ReportFiles(
        markdown=out / "report.md",
        html=out / "report.html",
        kpis_csv=out / "kpis.csv",
        kpis_parquet=out / "kpis.parquet",
        series_parquet=out / "series.parquet",
        series_csv_gz=out / "series.csv.gz",
        summary_csv=out / "summary.csv",
        plots=tuple(plots),
    )
    kpis.to_csv(files.kpis_csv, index=False)
    kpis.to_parquet(files.kpis_parquet, index=False)
    series.to_parquet(files.series_parquet, index=False)
    # mtime=0: the gzip header then carries no timestamp, so equal data gives equal bytes.
    series.to_csv(files.series_csv_gz, index=False, compression={"method": "gzip", "mtime": 0})
    summary.to_csv(files.summary_csv, index=False)

    blocks = _header_blocks(meta)
    blocks += [("h", 2, "KPIs per profile")]
    for profile in pd.unique(summary["profile"]):
        blocks += _profile_blocks(summary, str(profile), baseline_mode)
    blocks += _cost_floor_blocks(summary, oracle_mode)
    blocks += _target_blocks(kpis, {**meta, "oracle_mode": oracle_mode})
    blocks.append(("h", 2, "Plots"))
    blocks += [("img", p.relative_to(out).as_posix(), p.stem) for p in plots]
    blocks += _how_to_read()
    files.markdown.write_text(render_markdown(blocks), encoding="utf-8")
    files.html.write_text(render_html(blocks, out), encoding="utf-8")
    return files


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned plain-text table: first column left, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])


def format_kpi_table(summary: pd.DataFrame, profile: str | None = None) -> str:
    """Plain-text table of key KPIs per mode for the terminal (fits 120 columns).

    One block per profile (or only ``profile``): p95, SLO-violation %, throughput, cost and
    cost/oracle, scaling actions/h as mean ± 95 % CI with Welch marks vs the baseline.
    """
    profiles = list(pd.unique(summary["profile"]))
    if profile is not None:
        if profile not in profiles:
            raise ValueError(f"profile '{profile}' not in summary (have: {', '.join(profiles)})")
        profiles = [profile]
    headers = ["mode"]
    for kpi, short in _TERMINAL_KPIS:
        headers.append(f"{short} ({display_scale(kpi)[1]})")
        if kpi == COST_KPI:
            headers.append("cost/oracle")
    blocks = []
    for p in profiles:
        rows_p = summary[summary["profile"] == p]
        cell = {(r.mode, r.kpi): r for r in rows_p.itertuples(index=False)}
        rows = []
        for mode in pd.unique(rows_p["mode"]):
            row = [str(mode)]
            for kpi, _ in _TERMINAL_KPIS:
                c = cell[(mode, kpi)]
                text = format_mean_ci(c.mean, c.ci_half, c.n, c.n_missing, display_scale(kpi)[0])
                marks = significance_marks(c.p_welch)
                row.append(f"{text} {marks:<3}")  # padded so the numbers stay aligned
                if kpi == COST_KPI:
                    row.append(_ratio_text(c.ratio_to_oracle))
            rows.append(row)
        blocks.append(f"profile: {p}\n{_text_table(headers, rows)}")
    legend = (
        "± = 95 % CI half-width (t, N repeats); * p<0.05 ** p<0.01 *** p<0.001 (Welch vs baseline)"
    )
    return "\n\n".join([*blocks, legend])
