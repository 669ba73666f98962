"""The ``ecrl`` command: demo, experiment, train, placement, calibrate (each with --help, example).

The CLI is the only layer that prints for people; everything below it returns data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from ecrl.calibrate.triton_cli import OneLineErrorParser, add_triton_parser
from ecrl.cli_common import install, missing_extra
from ecrl.cli_microk8s import EPILOG as MICROK8S_EPILOG
from ecrl.cli_microk8s import add_microk8s_args, run_microk8s
from ecrl.cli_placement import add_placement_parser
from ecrl.config import from_file
from ecrl.errors import ConfigError
from ecrl.experiment.runner import (
    BASELINE_MODE,
    DEFAULT_MODES,
    ORACLE_MODE,
    RL_MODE,
    ExperimentConfig,
    resolve_profile,
    run_experiment,
)
from ecrl.load.shapes import BUILTIN_SHAPES, SEED_SHAPES, get_shape
from ecrl.twin.spec import ClusterSpec

EPILOG_DEMO = "example: ecrl demo --out results/demo"
EPILOG_EXP = (
    "examples:\n"
    "  ecrl experiment --modes hpa-cpu,kpa,oracle --shapes step,bursty --repeats 5\n"
    "  ecrl experiment --trace my_production_trace.csv --repeats 10 --out results/trace\n"
    "  ecrl experiment --backend testbed --shapes step --repeats 5 --time-scale 0.3\n"
    + MICROK8S_EPILOG
)
EPILOG_TRAIN = (
    "examples:\n"
    "  ecrl train --out runs/train                     # defaults: the reference box, ≤ 15 min\n"
    "  ecrl train --config my-train.yaml --install ecrl/models/rl-policy.onnx\n"
    "  tensorboard --logdir runs/train/tb              # curves while it runs"
)
EPILOG_CAL = (
    "examples:\n"
    "  ecrl calibrate local-cpu --out ecrl/profiles/local-cpu-mobilenetv4.yaml\n"
    "  ecrl calibrate triton --url http://HOST:8000 --batch 1,4,8,16 --concurrency 1,2,4,8,16 \\\n"
    "      --instances 1,2 --duration 10 --out profile.yaml --report report.md\n"
    "  ecrl calibrate triton --help      # every flag, the emulator example, --dry-run"
)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _add_experiment_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument(
        "--modes",
        type=_csv,
        default=DEFAULT_MODES,
        help="comma-separated modes (default: %(default)s)",
    )
    p.add_argument(
        "--shapes",
        type=_csv,
        default=SEED_SHAPES,
        help=f"built-in shapes: {', '.join(BUILTIN_SHAPES)}",
    )
    p.add_argument(
        "--trace", action="append", default=[], help="a CSV trace (time_s + users|rps); repeatable"
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="repeats per (mode, shape) (default: %(default)s)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="base seed; every run records its own (default: %(default)s)",
    )
    p.add_argument(
        "--cluster", default=None, help="cluster scenario YAML (default: the one-GPU reference box)"
    )
    p.add_argument(
        "--profile", default=None, help="calibration profile name or YAML (overrides the cluster's)"
    )
    p.add_argument(
        "--time-scale", type=float, default=1.0, help="stretch/compress every shape in time"
    )
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    p.add_argument("--out", default=default_out, help="output folder (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--backend",
        choices=("twin", "testbed", "microk8s"),
        default="twin",
        help="twin (embedded, default), testbed (a running `make testbed`, real time) or "
        "microk8s (the deployed chart on the GPU box, real time)",
    )
    p.add_argument("--testbed", default="ecrl", help="testbed cluster name (--backend testbed)")


def _run_testbed(args: argparse.Namespace, cfg: ExperimentConfig, shapes, cluster):
    """The same comparison on the running testbed (real time: Locust against the emulator)."""
    from ecrl.experiment.testbed_backend import (
        DEFAULT_TESTBED_MODES,
        TestbedEndpoints,
        check_modes,
        run_experiment_testbed,
    )
    from ecrl.testbed.cluster import TestbedError, attach
    from ecrl.testbed.dataplane import DEFAULT_TIME_SCALE

    if args.modes == DEFAULT_MODES:
        cfg = replace(cfg, modes=DEFAULT_TESTBED_MODES)
    check_modes(cfg.modes)
    try:
        tb = attach(args.testbed)
    except TestbedError as exc:
        raise ConfigError("command line", "--testbed", str(exc)) from None
    kpis, series = run_experiment_testbed(
        cfg,
        shapes,
        tb,
        TestbedEndpoints(emulator_time_scale=DEFAULT_TIME_SCALE),
        Path(args.out),
        cluster.slo_p95_s,
        progress=not args.no_progress,
    )
    return cfg, kpis, series


def _run_comparison(args: argparse.Namespace) -> int:
    cluster = from_file(ClusterSpec, args.cluster) if args.cluster else ClusterSpec()
    profile = resolve_profile(args.profile or cluster.profile)
    shapes = [get_shape(s) for s in args.shapes] + [get_shape(t) for t in args.trace]
    cfg = ExperimentConfig(
        modes=args.modes,
        shapes=tuple(s.name for s in shapes),
        repeats=args.repeats,
        seed=args.seed,
        time_scale=args.time_scale,
        jobs=args.jobs,
    )
    from ecrl.experiment.report import format_kpi_table, write_report
    from ecrl.experiment.stats import summarize

    t0 = time.perf_counter()
    slo_p95_s = cluster.slo_p95_s
    if args.backend == "testbed":
        from ecrl.testbed.dataplane import DEFAULT_TIME_SCALE

        cfg, kpis, series = _run_testbed(args, cfg, shapes, cluster)
        slo_p95_s *= DEFAULT_TIME_SCALE  # emulated service times are this much longer
        backend = (
            "testbed (real Kubernetes 1.33 control plane and HPA, kwok GPU nodes, emulated "
            "Triton data plane from the twin's profile, real Locust; runs are not seeded)"
        )
    elif args.backend == "microk8s":
        ran = run_microk8s(args, cfg, shapes, slo_p95_s)  # KPIs use it × the time scale
        if ran is None:
            print("dry run: every command printed above; nothing ran, nothing measured")
            return 0
        cfg, kpis, series = ran
        slo_p95_s *= args.data_plane_time_scale
        backend = (
            f"microk8s (the chart's modes switched by Helm on {args.release}/{args.namespace}; "
            "Triton on the GPU, real Locust, the cluster's Prometheus; runs are not seeded)"
        )
    else:
        kpis, series = run_experiment(
            cfg, cluster, profile, shapes=shapes, progress=not args.no_progress
        )
        backend = "twin (embedded digital twin; emulated, not hardware)"
    wall_s = time.perf_counter() - t0
    baseline = BASELINE_MODE if BASELINE_MODE in cfg.modes else cfg.modes[0]
    oracle = ORACLE_MODE if ORACLE_MODE in cfg.modes else None
    meta = {
        "backend": backend,
        "modes": list(cfg.modes),
        "profiles": list(cfg.shapes),
        "repeats": cfg.repeats,
        "seed": cfg.seed,
        "seeds": sorted(set(int(s) for s in kpis["seed"])),
        "config_hash": cfg.config_hash(cluster, profile),
        "twin_profile": profile.name,
        "cluster": cluster.name,
        "slo_p95_s": slo_p95_s,
        "baseline_mode": baseline,
        "oracle_mode": oracle,
        "rl_mode": RL_MODE if RL_MODE in cfg.modes else None,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(wall_s, 1),
    }
    files = write_report(args.out, kpis, series, meta)
    print(format_kpi_table(summarize(kpis, baseline, oracle)))
    if RL_MODE in cfg.modes:
        from ecrl.experiment.targets import check_targets

        print(f"\ntargets of '{RL_MODE}' (pooled over {', '.join(cfg.shapes)}):")
        for t in check_targets(kpis, RL_MODE, oracle, baseline):
            print(f"  {t.text()}")
    print(f"\n{len(kpis)} runs in {wall_s:.1f} s · report: {files.markdown} and {files.html}")
    Path(args.out, "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    try:
        from ecrl.calibrate.measure import measure_local_cpu, write_profile
    except ModuleNotFoundError as exc:
        return missing_extra("calibrate", exc.name, "calibrate")

    sizes = tuple(int(b) for b in _csv(args.batch_sizes))
    m = measure_local_cpu(
        sizes, repeats=args.repeats, threads=args.threads, progress=not args.no_progress
    )
    prof = write_profile(m, args.out)
    print(f"wrote {args.out} ({prof.name})")
    for b, t in zip(prof.compute.batch_sizes, prof.compute.exec_s, strict=True):
        print(f"  batch {b:>3}: {t * 1e3:8.2f} ms  ({b / t:7.1f} img/s)")
    return 0


def _train(args: argparse.Namespace) -> int:
    try:
        from ecrl.rl.train import load_train_config, run_training
    except ModuleNotFoundError as exc:
        return missing_extra("train", exc.name, "train")
    from dataclasses import replace

    cfg = load_train_config(args.config)
    if args.minutes is not None or args.seed is not None:
        ppo = cfg.ppo
        ppo = replace(ppo, max_minutes=args.minutes) if args.minutes is not None else ppo
        ppo = replace(ppo, seed=args.seed) if args.seed is not None else ppo
        cfg = replace(cfg, ppo=ppo)
    out = Path(args.out)
    _, result, export = run_training(cfg, out, progress=not args.no_progress)
    print(
        f"stopped: {result.stop_reason} after {result.updates} updates, "
        f"{result.global_steps:,} steps in {result.wall_s / 60:.1f} min "
        f"({result.steps_per_s:,.0f} steps/s)"
    )
    print(f"best validation score {result.best_score:.2f} at update {result.best_update}")
    print(
        f"exported {export['path']} ({export['bytes']:,} bytes, opset {export['opset']}): "
        f"max |onnx − torch| = {export['max_abs_diff']:.2e}, schema {export['schema_hash']}"
    )
    if args.install:
        install(export["path"], args.install)
    return 0


def _reexport(args: argparse.Namespace) -> int:
    try:
        from ecrl.rl.export import ExportError, reexport_onnx
    except ModuleNotFoundError as exc:
        return missing_extra("reexport", exc.name, "train")
    import tempfile

    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:  # a refused re-export never reaches --out
        staged = Path(tmp) / out.name
        try:
            report = reexport_onnx(args.policy, staged)
        except ExportError as exc:
            print(f"ecrl reexport: error: {exc}", file=sys.stderr)
            return 1
        install(str(staged), str(out))
    print(
        f"wrote {out} ({report.bytes:,} bytes, opset {report.opset}): the answers of {args.policy}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecrl", description="Learned GPU-inference control: twin, policies, experiments."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="default comparison on the embedded twin (all baselines + oracle, seed shapes, N=5)",
        epilog=EPILOG_DEMO,
    )
    _add_experiment_args(demo, "results/demo")
    add_microk8s_args(demo)
    demo.set_defaults(func=_run_comparison)
    exp = sub.add_parser(
        "experiment",
        help="compare modes over load shapes/traces with repeats and statistics",
        epilog=EPILOG_EXP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_experiment_args(exp, "results/experiment")
    add_microk8s_args(exp)
    exp.set_defaults(func=_run_comparison)
    tr = sub.add_parser(
        "train",
        help="train the PPO scaling policy on the twin and export it to ONNX",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("--config", default=None, help="training YAML (default: built-in defaults)")
    tr.add_argument("--out", default="runs/train", help="run folder (default: %(default)s)")
    tr.add_argument("--minutes", type=float, default=None, help="wall-clock budget override")
    tr.add_argument("--seed", type=int, default=None, help="seed override")
    tr.add_argument("--install", default=None, help="copy the exported policy.onnx here")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    tr.set_defaults(func=_train)
    rex = sub.add_parser(
        "reexport",
        help="write an exported policy again with this build's graph (same weights, same answers)",
        epilog="example: ecrl reexport ecrl/models/rl-policy.onnx --out ecrl/models/rl-policy.onnx",
    )
    rex.add_argument("policy", help="an ONNX policy written by `ecrl train`")
    rex.add_argument("--out", required=True, help="where to write it (may be the same path)")
    rex.set_defaults(func=_reexport)
    add_placement_parser(sub, _csv)
    cal = sub.add_parser(
        "calibrate",
        help="measure a model server and write a twin profile",
        epilog=EPILOG_CAL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    targets = cal.add_subparsers(dest="target", required=True, parser_class=OneLineErrorParser)
    local = targets.add_parser(
        "local-cpu",
        help="MobileNetV4-conv-small via onnxruntime on this machine (needs torch)",
        epilog="example: ecrl calibrate local-cpu --out ecrl/profiles/local-cpu-mobilenetv4.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    local.add_argument("--out", default="ecrl/profiles/local-cpu-mobilenetv4.yaml")
    local.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    local.add_argument("--repeats", type=int, default=20)
    local.add_argument("--threads", type=int, default=None)
    local.add_argument("--no-progress", action="store_true")
    local.set_defaults(func=_calibrate)
    add_triton_parser(targets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"ecrl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
