"""``ecrl calibrate triton``: sweep a live Triton, fit a twin profile, report the twin's error.

Flag parsing and printing only; the sweep, fit, profile and report live in their modules.
Needs the testbed extra (``tritonclient``), not torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ecrl import serving
from ecrl.errors import ConfigError

EPILOG = """examples:
  # a real Triton (metrics default to the same host, port 8002)
  ecrl calibrate triton --url http://10.0.0.5:8000 --batch 1,4,8,16 \\
      --concurrency 1,2,4,8,16 --instances 1,2 --duration 10 \\
      --out profiles/box.yaml --report results/calibrate/report.md
  # the testbed's emulator, standalone (one pod; its metrics are per pod)
  python -m ecrl.emulator standalone --pods 1 --time-scale 4 &
  ecrl calibrate triton --url http://127.0.0.1:8000 \\
      --metrics-url http://127.0.0.1:8002/metrics/pods/default/standalone-0 \\
      --batch 1,8 --concurrency 1,4,16 --instances 1,2 --duration 5 --out /tmp/emu.yaml
  # print the grid and the estimated time only
  ecrl calibrate triton --url http://127.0.0.1:8000 --dry-run
"""


class OneLineErrorParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line naming the flag (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        """Unknown flags are this subcommand's error (one line), not the root parser's."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _ints(flag: str, text: str) -> tuple[int, ...]:
    values = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        try:
            values.append(int(item))
        except ValueError:
            raise ConfigError("command line", flag, f"{item!r} is not an integer") from None
    if not values:
        raise ConfigError("command line", flag, "needs a comma-separated list of integers")
    return tuple(values)


def default_metrics_url(url: str) -> str:
    """Triton's metrics endpoint on the host of ``url``: ``http://HOST:8002/metrics``."""
    from ecrl.calibrate.triton_io import host_port

    host = host_port(url).rsplit(":", 1)[0]
    return f"http://{host}:8002/metrics"


def add_triton_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "triton",
        help="sweep a live Triton (or the testbed emulator) and fit a twin profile",
        description="Sweep max_batch_size × instance count × concurrency against a live\n"
        "Triton (model control load-with-config, closed-loop tritonclient requests of one\n"
        "real image each), fit the twin's service times into a profile, and report the\n"
        "twin's error at every measured point (Markdown + PNG + CSV).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", required=True, help="Triton HTTP endpoint, http://HOST:8000")
    p.add_argument("--grpc-url", default=None, help="HOST:8001: send inference over gRPC")
    p.add_argument(
        "--metrics-url",
        action="append",
        default=None,
        help="Triton metrics page (repeatable, summed; default http://HOST:8002/metrics)",
    )
    p.add_argument("--model", default=serving.MODEL_NAME, help="model name (%(default)s)")
    p.add_argument("--batch", default="1,4,8,16", help="max_batch_size values (%(default)s)")
    p.add_argument("--concurrency", default="1,2,4,8,16", help="clients (%(default)s)")
    p.add_argument("--instances", default="1,2", help="instance counts (%(default)s)")
    p.add_argument("--max-queue-delay-us", type=int, default=0, help="batching delay (µs)")
    p.add_argument("--duration", type=float, default=10.0, help="window per point, s")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up per point, s")
    p.add_argument("--timeout", type=float, default=30.0, help="per request and load, s")
    p.add_argument(
        "--cpu-limit", type=float, default=2.0, help="Triton pod's CPU limit, cores (twin)"
    )
    p.add_argument(
        "--probe-requests",
        type=int,
        default=10,
        help="batch-time probe: requests per batch size (0 = off) (%(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/calibrate/profile.yaml", help="profile YAML")
    p.add_argument(
        "--report", default=None, help="report Markdown (default: beside --out, report.md)"
    )
    p.add_argument("--name", default=None, help="profile name (default: --out's file stem)")
    p.add_argument(
        "--base-profile",
        default="rtx3080-mobilenetv4",
        help="profile supplying what a sweep cannot measure (memory, power) (%(default)s)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the grid and exit")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The validated :class:`SweepConfig` of the flags (ConfigError names a bad flag)."""
    from ecrl.calibrate.points import SweepConfig
    from ecrl.calibrate.triton_io import host_port

    for flag, url in (("--url", args.url), ("--grpc-url", args.grpc_url)):
        if url is not None:
            try:
                if not host_port(url):
                    raise ValueError(f"empty address {url!r}")
            except ValueError as exc:
                raise ConfigError("command line", flag, str(exc)) from None
    cfg = SweepConfig(
        url=args.url,
        metrics_urls=tuple(args.metrics_url or (default_metrics_url(args.url),)),
        grpc_url=args.grpc_url,
        model=args.model,
        batch_sizes=_ints("--batch", args.batch),
        concurrency=_ints("--concurrency", args.concurrency),
        instances=_ints("--instances", args.instances),
        max_queue_delay_us=args.max_queue_delay_us,
        duration_s=args.duration,
        warmup_s=args.warmup,
        timeout_s=args.timeout,
        cpu_limit_cores=args.cpu_limit,
        probe_requests=args.probe_requests,
        seed=args.seed,
    )
    cfg.validate()
    return cfg


def _print_grid(cfg) -> None:
    print(f"server {cfg.url} (metrics: {', '.join(cfg.metrics_urls)})")
    for batch, inst in cfg.settings():
        print(f"  load {json.dumps(cfg.model_config(batch, inst))}")
        print(f"    concurrency {list(cfg.concurrency)}")
    probes = sorted({b for m in cfg.batch_sizes for b in cfg.probe_sizes(m)})
    print(f"batch-time probe: {cfg.probe_requests} requests at each of {probes or 'none'}")
    n = len(cfg.settings()) * len(cfg.concurrency)
    print(f"{n} points, about {cfg.estimated_s() / 60:.1f} min")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.dry_run:
        _print_grid(cfg)
        return 0
    try:
        from ecrl.calibrate.sweep import run_sweep
    except ModuleNotFoundError as exc:
        why = f"calibrate triton needs tritonclient ({exc.name} missing); run `make venv-dev`"
        print(f"ecrl: error: {why}", file=sys.stderr)
        return 2
    from ecrl.calibrate.fit import FitError, fit_params
    from ecrl.calibrate.report import write_report
    from ecrl.calibrate.triton_profile import write_profile
    from ecrl.jsonsafe import finite
    from ecrl.twin.profile import builtin_profile_path, load_profile

    is_path = args.base_profile.endswith((".yaml", ".yml"))
    base = load_profile(args.base_profile if is_path else builtin_profile_path(args.base_profile))
    out = Path(args.out)
    report = Path(args.report) if args.report else out.with_name("report.md")
    result = run_sweep(cfg, progress=not args.no_progress)
    raw = report.with_suffix(".json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(finite(dataclasses.asdict(result)), indent=1, default=str))
    try:
        fitted = fit_params(result.points, result.probes, result.reload_s)
    except FitError as exc:
        print(f"ecrl: error: cannot fit a profile: {exc} (raw sweep: {raw})", file=sys.stderr)
        return 1
    profile = write_profile(result, fitted, base, out, args.name or out.stem)
    s, png, _ = write_report(result, fitted, profile, str(out), report)
    kind = "EMULATED" if result.provenance.emulated else "live"
    print(f"wrote {out} ({profile.name}, {kind} server) and {report} (+ {png.name})")
    print(f"  {s.measured} points measured, {s.missing} missing, {result.wall_s:.0f} s")
    print(
        f"  exec(b) = {fitted.exec_intercept_s * 1e3:.2f} ms + {fitted.exec_slope_s * 1e3:.3f} "
        f"ms·b; CPU {fitted.cpu_s_per_request * 1e3:.1f} ms/request; client overhead "
        f"{fitted.client_overhead_s * 1e3:.1f} ms"
    )
    print(
        f"  twin error |median| / |max|: throughput {s.throughput_median:.1%} / "
        f"{s.throughput_max:.1%}, p95 {s.p95_median:.1%} / {s.p95_max:.1%}"
    )
    return 0
