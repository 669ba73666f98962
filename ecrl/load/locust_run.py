"""Run real Locust headless in a subprocess and read its results as pandas DataFrames.

Locust is always run in its own process: ``import locust`` monkey-patches the standard library
with gevent, which must not happen inside the experiment harness or pytest. The run is bounded
by a timeout, and its outputs are Locust's own files:

* ``<prefix>_stats_history.csv`` (``--csv-full-history``): one row per second per request
  type plus ``Aggregated``. Locust computes ``Requests/s``/``Failures/s`` over the last ~10 s
  and the percentiles over a 10 s sliding window (``stats.py``: ``current_rps``,
  ``CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW``); the ``Total *`` columns are cumulative.
* ``<prefix>.json`` (``--json-file``): exact final totals per request type.
* ``<prefix>_requests.csv`` (``ECRL_REQUEST_LOG``, Locust's ``CsvRequestLogger``): one row per
  request, for exact per-second KPIs.
* ``<prefix>_failures.csv`` / ``<prefix>_exceptions.csv``: failure messages and user-code errors.

Locust's exit code is 1 whenever a request failed (``--exit-code-on-error``); failed requests
are data, not a failed run, so it is set to 0 here and any non-zero exit means Locust itself
failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ecrl.errors import EcrlError
from ecrl.load.shapes import get_shape

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LOCUSTFILE = REPO_ROOT / "loadtest" / "locustfile.py"
USER_CLASSES: tuple[str, ...] = ("TritonHttpUser", "TritonGrpcUser")
TIMEOUT_GRACE_S = 30.0
"""Start-up (imports, image preprocessing) and shutdown on top of the planned duration."""

HISTORY_COLUMNS: dict[str, str] = {
    "Timestamp": "timestamp",
    "User Count": "user_count",
    "Type": "request_type",
    "Name": "name",
    "Requests/s": "rps",
    "Failures/s": "failures_per_s",
    "50%": "p50_ms",
    "95%": "p95_ms",
    "99%": "p99_ms",
    "Total Request Count": "total_requests",
    "Total Failure Count": "total_failures",
    "Total Average Response Time": "total_avg_ms",
}
"""Locust 2.47 ``_stats_history.csv`` header → our names (other columns are dropped)."""


class LocustRunError(EcrlError):
    """Locust did not run to completion; the message carries the tail of its log."""


@dataclass(frozen=True)
class LocustResult:
    """What one headless Locust run produced."""

    csv_prefix: Path
    history: pd.DataFrame
    """Per-second rows (see :data:`HISTORY_COLUMNS`), ``t_s`` from the first row."""
    totals: pd.DataFrame
    """One row per request type: request_type, name, requests, failures, avg_ms, max_ms."""
    requests: pd.DataFrame | None
    """One row per request (send ``timestamp``, ``request_type``, ``response_time_ms``, …)."""
    failures: pd.DataFrame
    """Locust's ``_failures.csv``: Method, Name, Error, Occurrences."""
    exceptions: pd.DataFrame
    """Locust's ``_exceptions.csv``: errors raised by user code (should be empty)."""
    wall_s: float
    log_path: Path

    @property
    def total_requests(self) -> int:
        return int(self.totals["requests"].sum())

    @property
    def total_failures(self) -> int:
        return int(self.totals["failures"].sum())


def _tail(path: Path, n_chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n_chars:]
    except OSError:
        return "<no log>"


def read_history(path: Path) -> pd.DataFrame:
    """``<prefix>_stats_history.csv`` → DataFrame with :data:`HISTORY_COLUMNS` and ``t_s``."""
    raw = pd.read_csv(path, na_values=["N/A"], keep_default_na=False)
    missing = set(HISTORY_COLUMNS) - set(raw.columns)
    if missing:
        raise LocustRunError(f"{path}: missing columns {sorted(missing)} (Locust format changed?)")
    df = raw[list(HISTORY_COLUMNS)].rename(columns=HISTORY_COLUMNS)
    df["request_type"] = df["request_type"].fillna("").astype(str)
    df["t_s"] = df["timestamp"] - (df["timestamp"].iloc[0] if len(df) else 0)
    return df


def read_totals(path: Path) -> pd.DataFrame:
    """``<prefix>.json`` (Locust's ``--json-file``) → one row per request type."""
    entries = json.loads(path.read_text())
    rows = [
        {
            "request_type": e["method"],
            "name": e["name"],
            "requests": int(e["num_requests"]),
            "failures": int(e["num_failures"]),
            "avg_ms": e["total_response_time"] / e["num_requests"] if e["num_requests"] else None,
            "max_ms": e["max_response_time"],
        }
        for e in entries
    ]
    cols = ["request_type", "name", "requests", "failures", "avg_ms", "max_ms"]
    return pd.DataFrame(rows, columns=cols)


def _read_csv_or_empty(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False) if path.is_file() else pd.DataFrame()


def locust_command(
    host: str,
    csv_prefix: Path,
    *,
    users_class: Sequence[str] = USER_CLASSES,
    users: int | None = None,
    spawn_rate: float | None = None,
    run_time_s: float | None = None,
    locustfile: Path = DEFAULT_LOCUSTFILE,
) -> list[str]:
    """The ``locust`` command line (``sys.executable -m locust`` keeps it in this venv)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--host", host]
    cmd += ["--csv", str(csv_prefix), "--csv-full-history", "--only-summary"]
    cmd += ["--json-file", str(csv_prefix), "--exit-code-on-error", "0"]
    if users is not None:
        cmd += ["-u", str(users), "-r", str(spawn_rate or users)]
    if run_time_s is not None:
        cmd += ["-t", f"{max(1, round(run_time_s))}s"]
    return [*cmd, *users_class]


def run_locust(
    host: str,
    shape: str | None,
    out_prefix: str | Path,
    *,
    users_class: Sequence[str] = USER_CLASSES,
    time_scale: float = 1.0,
    users_scale: float = 1.0,
    grpc_url: str | None = None,
    users: int | None = None,
    run_time_s: float | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    locustfile: Path = DEFAULT_LOCUSTFILE,
    stop: threading.Event | None = None,
) -> LocustResult:
    """Run Locust headless against ``host`` and parse its CSVs.

    ``shape``: a built-in shape or trace CSV (``ECRL_SHAPE``, scaled by ``time_scale`` and
    ``users_scale``); or None for a fixed ``users`` for ``run_time_s`` seconds. The run is
    killed after ``timeout_s`` (default: planned duration + :data:`TIMEOUT_GRACE_S`). Setting
    ``stop`` ends the run early the way Ctrl-C does (SIGTERM: Locust writes its files).
    """
    if shape is None and (users is None or run_time_s is None):
        raise ValueError("without a shape, give users and run_time_s")
    if not locustfile.is_file():
        raise LocustRunError(f"locustfile not found: {locustfile}")
    # Locust runs from the repository root: relative paths are resolved against ours first.
    prefix = Path(out_prefix).resolve()
    if shape and Path(shape).suffix.lower() == ".csv":
        shape = str(Path(shape).resolve())
    prefix.parent.mkdir(parents=True, exist_ok=True)
    planned_s = get_shape(shape).duration_s * time_scale if shape else float(run_time_s or 0)
    limit_s = timeout_s if timeout_s is not None else planned_s + TIMEOUT_GRACE_S
    requests_path = Path(f"{prefix}_requests.csv")
    log_path = Path(f"{prefix}_locust.log")
    env = {**os.environ, **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["ECRL_REQUEST_LOG"] = str(requests_path)
    env.pop("ECRL_SHAPE", None)
    if shape:
        env |= {
            "ECRL_SHAPE": shape,
            "ECRL_TIME_SCALE": repr(time_scale),
            "ECRL_USERS_SCALE": repr(users_scale),
        }
    if grpc_url:
        env["ECRL_GRPC_URL"] = grpc_url
    cmd = locust_command(
        host,
        prefix,
        users_class=users_class,
        users=None if shape else users,
        run_time_s=None if shape else run_time_s,
        locustfile=locustfile,
    )
    start = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        stopped = False
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stop is not None and stop.is_set():
                    _stop(proc)
                    rc, stopped = proc.returncode, True
                    break
                if time.monotonic() - start > limit_s:
                    _stop(proc)
                    raise LocustRunError(
                        f"Locust ran past {limit_s:.0f} s and was stopped; log tail:\n"
                        f"{_tail(log_path)}"
                    ) from None
    wall_s = time.monotonic() - start
    history_path = Path(f"{prefix}_stats_history.csv")
    json_path = Path(f"{prefix}.json")
    if (rc != 0 and not stopped) or not history_path.is_file() or not json_path.is_file():
        raise LocustRunError(f"Locust exited with code {rc}; log tail:\n{_tail(log_path)}")
    return LocustResult(
        csv_prefix=prefix,
        history=read_history(history_path),
        totals=read_totals(json_path),
        requests=pd.read_csv(requests_path, keep_default_na=False)
        if requests_path.is_file()
        else None,
        failures=_read_csv_or_empty(Path(f"{prefix}_failures.csv")),
        exceptions=_read_csv_or_empty(Path(f"{prefix}_exceptions.csv")),
        wall_s=wall_s,
        log_path=log_path,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (Locust writes its files and exits), then SIGKILL after 10 s."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run Locust headless and print the totals (for people; the CSVs hold the data)."""
    parser = argparse.ArgumentParser(
        prog="python -m ecrl.load.locust_run",
        description="Run loadtest/locustfile.py headless in a subprocess and summarise its CSVs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  # the seeds' step shape, 10x shorter, both protocols, against a local Triton
  python -m ecrl.load.locust_run --host http://127.0.0.1:8000 --grpc-url 127.0.0.1:8001 \\
      --shape step --time-scale 0.1 --out results/step
  # 5 HTTP users for 30 s
  python -m ecrl.load.locust_run --host http://127.0.0.1:8000 -u 5 -t 30 \\
      --users-class TritonHttpUser --out results/http5
""",
    )
    parser.add_argument("--host", required=True, help="Triton HTTP base URL, http://HOST:PORT")
    parser.add_argument("--grpc-url", help="Triton gRPC HOST:PORT (default 127.0.0.1:8001)")
    parser.add_argument("--shape", help="built-in shape name or trace CSV (time_s, users|rps)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="shape time factor")
    parser.add_argument("--users-scale", type=float, default=1.0, help="shape users factor")
    parser.add_argument("-u", "--users", type=int, help="fixed users (without --shape)")
    parser.add_argument("-t", "--run-time-s", type=float, help="seconds (without --shape)")
    parser.add_argument(
        "--users-class", action="append", choices=USER_CLASSES, help="repeatable; default both"
    )
    parser.add_argument("--out", required=True, help="CSV prefix, e.g. results/run")
    parser.add_argument("--timeout-s", type=float, help="kill Locust after this many seconds")
    args = parser.parse_args(argv)
    if args.shape is None and (args.users is None or args.run_time_s is None):
        parser.error("give --shape, or both -u and -t")
    try:
        result = run_locust(
            args.host,
            args.shape,
            args.out,
            users_class=args.users_class or USER_CLASSES,
            time_scale=args.time_scale,
            users_scale=args.users_scale,
            grpc_url=args.grpc_url,
            users=args.users,
            run_time_s=args.run_time_s,
            timeout_s=args.timeout_s,
        )
    except EcrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.totals.to_string(index=False))
    print(
        f"{result.total_requests} requests, {result.total_failures} failed, {result.wall_s:.1f} s"
    )
    print(f"files: {result.csv_prefix}_*.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
