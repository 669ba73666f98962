"""The calibration report: the twin's error against every measured point, as Markdown + PNG.

For each point the twin predicts (``ecrl.calibrate.predict``) throughput and latency with the
fitted profile at the same max_batch_size, instance count and concurrency; the table shows
measured, predicted and the relative error ``(twin − measured) / measured``. A point that
was not measured stays in the table as *missing* with its reason and counts in no summary.
The raw figures also go to a CSV beside the report.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ecrl.calibrate.fit import FittedParams
from ecrl.calibrate.points import Point
from ecrl.calibrate.predict import Prediction, closed_loop
from ecrl.calibrate.sweep import SweepResult
from ecrl.twin.profile import Profile


@dataclass(frozen=True)
class Row:
    """One grid point: what was measured and what the twin predicts there."""

    point: Point
    twin: Prediction

    def error(self, measured: float | None, predicted: float) -> float:
        """Relative error of the twin; NaN where the measurement is missing or not finite."""
        if measured is None or not math.isfinite(measured) or measured <= 0:
            return math.nan
        return (predicted - measured) / measured

    @property
    def throughput_err(self) -> float:
        c = self.point.client
        return self.error(
            c.throughput_rps if self.point.measured and c else None, self.twin.throughput_rps
        )

    @property
    def p95_err(self) -> float:
        c = self.point.client
        return self.error(c.p95_s if self.point.measured and c else None, self.twin.p95_s)

    @property
    def mean_err(self) -> float:
        c = self.point.client
        return self.error(
            c.latency_mean_s if self.point.measured and c else None, self.twin.latency_mean_s
        )


@dataclass(frozen=True)
class Summary:
    """Median and max |relative error| over the measured points (NaN if none)."""

    measured: int
    missing: int
    throughput_median: float
    throughput_max: float
    p95_median: float
    p95_max: float
    mean_median: float
    mean_max: float


def predict_rows(result: SweepResult, profile: Profile) -> list[Row]:
    """The twin's prediction for every point of the grid (missing ones included)."""
    cfg = result.config
    return [
        Row(
            p,
            closed_loop(
                profile,
                p.concurrency,
                p.max_batch,
                p.instances,
                cfg.cpu_limit_cores,
                cfg.max_queue_delay_us / 1e6,
            ),
        )
        for p in result.points
    ]


def summarize(rows: Sequence[Row]) -> Summary:
    def stats(errors: list[float]) -> tuple[float, float]:
        vals = np.abs([e for e in errors if math.isfinite(e)])
        return (float(np.median(vals)), float(vals.max())) if vals.size else (math.nan, math.nan)

    measured = [r for r in rows if r.point.measured]
    tp = stats([r.throughput_err for r in measured])
    p95 = stats([r.p95_err for r in measured])
    mean = stats([r.mean_err for r in measured])
    return Summary(len(measured), len(rows) - len(measured), *tp, *p95, *mean)


def _pct(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x * 100:+.1f} %"


def _abs_pct(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x * 100:.1f} %"


def _ms(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x * 1e3:.1f}"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, fmt)


def error_table(rows: Sequence[Row]) -> list[str]:
    """Markdown table: measured vs twin per point, relative errors, missing points named."""
    head = (
        "| batch | inst | conc | req/s | twin req/s | err | mean ms | twin mean | err "
        "| p50 ms | p95 ms | twin p95 | err | p99 ms | batch formed | twin batch "
        "| compute ms | twin compute | queue ms | twin queue | failed |"
    )
    out = [head, "|" + "---|" * 21]
    for r in rows:
        p, t, c = r.point, r.twin, r.point.client
        lead = f"| {p.max_batch} | {p.instances} | {p.concurrency} "
        if not p.measured or c is None:
            out.append(lead + f"| missing: {p.missing} |" + " |" * 17)  # 21 columns
            continue
        out.append(
            lead + f"| {c.throughput_rps:.2f} | {t.throughput_rps:.2f} | {_pct(r.throughput_err)} "
            f"| {_ms(c.latency_mean_s)} | {_ms(t.latency_mean_s)} | {_pct(r.mean_err)} "
            f"| {_ms(c.p50_s)} | {_ms(c.p95_s)} | {_ms(t.p95_s)} | {_pct(r.p95_err)} "
            f"| {_ms(c.p99_s)} | {_num(p.batch_formed, '.2f')} | {t.batch:.2f} "
            f"| {_ms(p.compute_s)} | {_ms(t.compute_s)} | {_ms(p.queue_s)} | {_ms(t.queue_s)} "
            f"| {c.failed} |"
        )
    return out


def probe_table(probes: Sequence[Point], fitted: FittedParams) -> list[str]:
    """The batch-time probe: Triton's compute per batch size against the fitted line."""
    if not probes:
        return ["No batch-time probe ran (`--probe-requests 0`)."]
    out = [
        "| images | requests | compute ms | fitted ms | client mean ms |",
        "|---|---|---|---|---|",
    ]
    for p in probes:
        c = p.client
        if not p.measured or p.compute_s is None or c is None:
            why = p.missing or p.server_missing
            fit_ms = fitted.exec_time_s(p.images) * 1e3
            out.append(f"| {p.images} | — | missing: {why} | {fit_ms:.2f} | — |")
            continue
        out.append(
            f"| {p.images} | {c.ok} | {p.compute_s * 1e3:.2f} "
            f"| {fitted.exec_time_s(p.images) * 1e3:.2f} | {_ms(c.latency_mean_s)} |"
        )
    return out


def plot(rows: Sequence[Row], path: Path) -> None:
    """Measured (markers, solid) vs twin (dashed) throughput and p95 per concurrency."""
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax_tp, ax_p95 = fig.subplots(1, 2)
    settings = sorted({(r.point.max_batch, r.point.instances) for r in rows})
    for i, (b, n) in enumerate(settings):
        mine = [r for r in rows if (r.point.max_batch, r.point.instances) == (b, n)]
        mine.sort(key=lambda r: r.point.concurrency)
        conc = [r.point.concurrency for r in mine]
        color = f"C{i % 10}"
        label = f"batch {b}, {n} inst"

        def measured(get, rows_=mine) -> list[float]:
            return [get(r.point.client) if r.point.measured else math.nan for r in rows_]

        ax_tp.plot(conc, measured(lambda c: c.throughput_rps), "o-", color=color, label=label)
        ax_tp.plot(conc, [r.twin.throughput_rps for r in mine], "--", color=color)
        ax_p95.plot(conc, measured(lambda c: c.p95_s * 1e3), "o-", color=color, label=label)
        ax_p95.plot(conc, [r.twin.p95_s * 1e3 for r in mine], "--", color=color)
    ticks = sorted({r.point.concurrency for r in rows})
    for ax, title in ((ax_tp, "throughput (req/s)"), (ax_p95, "p95 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("concurrency (closed-loop clients)")
        ax.set_title(f"{title}: measured (o—) vs twin (- -)")
        ax.grid(alpha=0.3)
    ax_tp.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_csv(rows: Sequence[Row], path: Path) -> None:
    cols = [
        "max_batch",
        "instances",
        "concurrency",
        "missing",
        "server_missing",
        "ok",
        "failed",
        "throughput_rps",
        "latency_mean_s",
        "p50_s",
        "p95_s",
        "p99_s",
        "batch_formed",
        "compute_s",
        "queue_s",
        "server_s",
        "other_s",
        "twin_throughput_rps",
        "twin_latency_mean_s",
        "twin_p95_s",
        "twin_batch",
        "twin_compute_s",
        "twin_queue_s",
        "twin_saturated",
    ]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            p, c, t = r.point, r.point.client, r.twin
            client = (
                [c.ok, c.failed, c.throughput_rps, c.latency_mean_s, c.p50_s, c.p95_s, c.p99_s]
                if c is not None
                else [""] * 7
            )
            server = [p.batch_formed, p.compute_s, p.queue_s, p.server_s, p.other_s]
            w.writerow(
                [p.max_batch, p.instances, p.concurrency, p.missing or "", p.server_missing or ""]
                + client
                + ["" if v is None else v for v in server]
                + [
                    t.throughput_rps,
                    t.latency_mean_s,
                    t.p95_s,
                    t.batch,
                    t.compute_s,
                    t.queue_s,
                    t.saturated,
                ]
            )


def write_report(
    result: SweepResult, fitted: FittedParams, profile: Profile, profile_path: str, md_path: Path
) -> tuple[Summary, Path, Path]:
    """Write ``md_path``, its plot (``.png``) and raw figures (``.csv``); returns the summary."""
    rows = predict_rows(result, profile)
    s = summarize(rows)
    png, csv_path = md_path.with_suffix(".png"), md_path.with_suffix(".csv")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, png)
    write_csv(rows, csv_path)
    cfg, prov = result.config, result.provenance
    lines = [
        f"# Calibration: {cfg.model} on {prov.server_name} {prov.server_version}",
        "",
        f"- server: {prov.url} (inference over {prov.protocol}); metrics: "
        f"{', '.join(prov.metrics_urls)}",
        f"- **emulated: {str(prov.emulated).lower()}** ({prov.emulated_source})",
        f"- date: {prov.date}; sweep wall time {result.wall_s:.0f} s",
        f"- grid: max_batch_size {list(cfg.batch_sizes)} × instances {list(cfg.instances)} × "
        f"concurrency {list(cfg.concurrency)}; max_queue_delay {cfg.max_queue_delay_us} µs; "
        f"{cfg.duration_s:g} s per point after {cfg.warmup_s:g} s warm-up; closed loop, one "
        "image per request",
        f"- profile written: `{profile_path}`; twin predictions use a CPU limit of "
        f"{cfg.cpu_limit_cores:g} cores",
        "",
        "## Twin error summary",
        "",
        "Relative error = (twin − measured) / measured, over the measured points "
        f"({s.measured} measured, {s.missing} missing).",
        "",
        "| figure | median abs error | max abs error |",
        "|---|---|---|",
        f"| throughput | {_abs_pct(s.throughput_median)} | {_abs_pct(s.throughput_max)} |",
        f"| p95 latency | {_abs_pct(s.p95_median)} | {_abs_pct(s.p95_max)} |",
        f"| mean latency | {_abs_pct(s.mean_median)} | {_abs_pct(s.mean_max)} |",
        "",
        "## Fitted parameters",
        "",
        f"- batch execution: {fitted.exec_intercept_s * 1e3:.3f} ms + "
        f"{fitted.exec_slope_s * 1e3:.3f} ms × batch (from {fitted.exec_points} "
        f"{fitted.exec_source} points, rmse {fitted.exec_rmse_s * 1e3:.3f} ms)",
        f"- server CPU per request: {fitted.cpu_s_per_request * 1e3:.2f} ms; client overhead "
        f"{fitted.client_overhead_s * 1e3:.2f} ms; host per batch "
        f"{fitted.host_s_per_batch * 1e3:.3f} ms; service cv {fitted.service_cv:.3f} "
        f"({fitted.uncontended_points} uncontended points)",
        "- reload (load-with-config): "
        + (f"{fitted.reload_s:.2f} s" if fitted.reload_s is not None else "missing"),
        *(f"- note: {n}" for n in fitted.notes),
        "",
        "## Measured vs twin, per point",
        "",
        f"![measured vs twin]({png.name})",
        "",
        *error_table(rows),
        "",
        "## Batch-time probe (one request of b images at a time)",
        "",
        *probe_table(result.probes, fitted),
        "",
        f"Raw figures: `{csv_path.name}`.",
        "",
    ]
    md_path.write_text("\n".join(lines))
    return s, png, csv_path
