"""The fitted profile loads, the report shows the twin's error, and the CLI's flags check."""

from __future__ import annotations

import csv
import math

import pytest
import yaml

from ecrl import cli
from ecrl.calibrate.fit import fit_params
from ecrl.calibrate.report import predict_rows, summarize, write_report
from ecrl.calibrate.triton_profile import write_profile
from ecrl.twin.profile import builtin_profile_path, load_profile
from tests.unit.calibrate.synthetic import Truth, sweep


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cal")
    result = sweep(Truth(), noise=0.01)
    fitted = fit_params(result.points, result.probes, result.reload_s)
    base = load_profile(builtin_profile_path("rtx3080-mobilenetv4"))
    profile = write_profile(result, fitted, base, out / "p.yaml", "synthetic")
    summary, png, csv_path = write_report(
        result, fitted, profile, str(out / "p.yaml"), out / "r.md"
    )
    return {
        "out": out,
        "result": result,
        "fitted": fitted,
        "profile": profile,
        "summary": summary,
        "png": png,
        "csv": csv_path,
    }


def test_profile_loads_with_fitted_figures_and_provenance(written: dict) -> None:
    prof, fitted = written["profile"], written["fitted"]
    assert load_profile(str(written["out"] / "p.yaml")) == prof
    assert prof.name == "synthetic"
    assert prof.compute.batch_sizes == (1, 2, 4, 8)
    assert prof.compute.exec_s[0] == pytest.approx(fitted.exec_time_s(1), rel=1e-4)
    assert prof.server.cpu_s_per_request == pytest.approx(fitted.cpu_s_per_request, rel=1e-4)
    assert prof.server.reload_s == pytest.approx(2.0)
    assert prof.gpu.background_util_ratio == 0.0
    text = (written["out"] / "p.yaml").read_text()
    assert "emulated: true  (server metadata)" in text
    assert "url: http://127.0.0.1:8000" in text
    assert "grid: max_batch_size [1, 8] x instances [1, 2] x concurrency [1, 4, 16]" in text
    assert "emulated" in yaml.safe_load(text)["description"]


def test_report_has_the_error_table_summary_plot_and_missing_rows(written: dict) -> None:
    md = (written["out"] / "r.md").read_text()
    assert "## Twin error summary" in md
    assert "| throughput |" in md and "| p95 latency |" in md
    assert "| batch | inst | conc | req/s | twin req/s | err |" in md
    assert md.count("missing: model load failed: CUDA out of memory") == 3
    assert "(9 measured, 3 missing)" in md
    assert "**emulated: true**" in md
    assert written["png"].stat().st_size > 10_000
    with written["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12
    gone = [r for r in rows if r["missing"]]
    assert len(gone) == 3 and all(r["throughput_rps"] == "" for r in gone)  # never filled in


def test_summary_is_over_measured_points_only(written: dict) -> None:
    rows = predict_rows(written["result"], written["profile"])
    s = summarize(rows)
    assert (s.measured, s.missing) == (9, 3)
    errs = [abs(r.throughput_err) for r in rows if r.point.measured]
    assert s.throughput_max == pytest.approx(max(errs))
    assert all(math.isnan(r.throughput_err) for r in rows if not r.point.measured)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_dry_run_prints_the_grid_without_contacting_a_server(capsys) -> None:
    rc, out, _ = run_cli(
        [
            "calibrate",
            "triton",
            "--url",
            "http://203.0.113.1:8000",
            "--batch",
            "1,8",
            "--instances",
            "1,2",
            "--concurrency",
            "1,4",
            "--dry-run",
        ],
        capsys,
    )
    assert rc == 0
    assert out.count('"max_batch_size"') == 4
    assert '"instance_group": [{"count": 2, "kind": "KIND_GPU"}]' in out
    assert "http://203.0.113.1:8002/metrics" in out
    assert "8 points" in out


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--batch", "1,x"], "--batch"),
        (["--concurrency", "0"], "--concurrency"),
        (["--instances", "1,1"], "--instances"),
        (["--duration", "-2"], "--duration"),
        (["--duration", "abc"], "--duration"),
        (["--cpu-limit", "0"], "--cpu-limit"),
        (["--url", "ftp://x:1"], "--url"),
        (["--frobnicate"], "--frobnicate"),
    ],
)
def test_bad_flag_is_one_line_naming_it(flags: list[str], named: str, capsys) -> None:
    argv = ["calibrate", "triton", "--url", "http://127.0.0.1:8000", "--dry-run", *flags]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert named in err


def test_help_has_an_example(capsys) -> None:
    rc, out, _ = run_cli(["calibrate", "triton", "--help"], capsys)
    assert rc == 0
    assert "ecrl calibrate triton --url http://" in out and "--dry-run" in out


def test_local_cpu_target_keeps_its_flags() -> None:
    args = cli.build_parser().parse_args(["calibrate", "local-cpu", "--out", "x.yaml"])
    assert (args.target, args.out, args.batch_sizes) == ("local-cpu", "x.yaml", "1,2,4,8,16,32")
