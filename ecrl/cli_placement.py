"""``ecrl placement``: train the learned node scorer and compare it with the default scheduler.

A thin CLI layer (it prints for people) over :mod:`ecrl.rl.placement_train` (needs torch, for
the ONNX export) and :mod:`ecrl.experiment.placement` (torch-free: the scorer runs from ONNX).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ecrl.cli_common import install, missing_extra
from ecrl.errors import ConfigError
from ecrl.experiment.runner import resolve_profile

EPILOG_PLACEMENT_TRAIN = (
    "examples:\n"
    "  ecrl placement train --out runs/placement       # defaults: multi-node.yaml, ≤ 3 min\n"
    "  ecrl placement train --install ecrl/models/placement.onnx\n"
    "  ecrl placement train --fast --out /tmp/placement  # a ≤ 20 s smoke run"
)
EPILOG_PLACEMENT_COMPARE = (
    "examples:\n"
    "  ecrl placement compare                          # packaged scorer, multi-node.yaml\n"
    "  ecrl placement compare --cluster multi-node-decorrelated --out results/placement-decor\n"
    "  ecrl placement compare --scorer runs/placement/placement.onnx --shapes step,bursty"
)


def _placement_train(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("torch") is None:  # the ONNX export builds a torch copy
        return missing_extra("placement train", "torch", "venv-dev")
    from ecrl.rl.placement_train import PlacementTrainConfig, fast_config, train_placement

    cfg = fast_config() if args.fast else PlacementTrainConfig()
    report = train_placement(cfg, Path(args.out), progress=not args.no_progress)
    base = report["validation_baselines"]
    print(
        f"{report['generations']} generations in {report['wall_time_s'] / 60:.1f} min; "
        f"validation objective (lower is better): learned {report['best_validation']:.4f}, "
        + ", ".join(f"{k} {v:.4f}" for k, v in base.items())
    )
    export = report["export"]
    print(f"exported {export['path']}: max |onnx − torch| = {export['max_abs_diff_vs_torch']:.2e}")
    if args.install:
        install(export["path"], args.install)
    return 0


def _placement_compare(args: argparse.Namespace) -> int:
    from ecrl.errors import Permanent
    from ecrl.experiment.placement import (
        PlacementCompareConfig,
        compare_placement,
        default_contenders,
        write_comparison,
    )
    from ecrl.twin.spec import resolve_cluster

    if not Path(args.scorer).is_file():
        hint = "train one with `ecrl placement train --install ecrl/models/placement.onnx`"
        raise ConfigError("placement compare", "--scorer", f"{args.scorer}: not found; {hint}")
    cluster = resolve_cluster(args.cluster)
    cfg = PlacementCompareConfig(
        shapes=args.shapes,
        repeats=args.repeats,
        seed=args.seed,
        time_scale=args.time_scale,
        profile=cluster.profile,
    )
    try:
        contenders = default_contenders(args.scorer)
    except Permanent as exc:
        print(f"ecrl: error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result = compare_placement(cfg, cluster, contenders, progress=not args.no_progress)
    wall_s = time.perf_counter() - t0
    meta = {
        "backend": "twin (embedded digital twin; emulated, not hardware)",
        "cluster": cluster.name,
        "cluster_source": args.cluster,
        "scorer": args.scorer,
        "contenders": list(contenders),
        "baseline": next(iter(contenders)),
        "autoscaler": cfg.autoscaler,
        "shapes": list(cfg.shapes),
        "repeats": cfg.repeats,
        "seed": cfg.seed,
        "seeds": sorted(set(int(s) for s in result.runs["seed"])),
        "config_hash": cfg.config_hash(cluster, resolve_profile(cfg.profile)),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(wall_s, 1),
    }
    files = write_comparison(result, args.out, meta)
    print(result.markdown)
    print(f"\n{len(result.runs)} runs in {wall_s:.1f} s · table: {files['markdown']}")
    return 0


def add_placement_parser(
    sub: argparse._SubParsersAction, csv: Callable[[str], tuple[str, ...]]
) -> None:
    """Register ``ecrl placement train|compare`` (``csv``: the CLI's comma-list parser)."""
    from ecrl.experiment.placement import HELD_OUT_SHAPES, PACKAGED_SCORER

    pl = sub.add_parser("placement", help="train and compare the learned node scorer")
    psub = pl.add_subparsers(dest="placement_command", required=True)
    tr = psub.add_parser(
        "train",
        help="train the placement scorer on the multi-node twin (evolution strategy) → ONNX",
        epilog=EPILOG_PLACEMENT_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("--out", default="runs/placement", help="run folder (default: %(default)s)")
    tr.add_argument("--fast", action="store_true", help="a ≤ 20 s smoke run (tiny population)")
    tr.add_argument("--install", default=None, help="copy the exported placement.onnx here")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    tr.set_defaults(func=_placement_train)
    cmp = psub.add_parser(
        "compare",
        help="default scheduler vs twin spread vs learned scorer, same autoscaler and seeds",
        epilog=EPILOG_PLACEMENT_COMPARE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp.add_argument(
        "--scorer",
        default=PACKAGED_SCORER,
        help="learned scorer ONNX (default: the packaged ecrl/models/placement.onnx)",
    )
    cmp.add_argument(
        "--cluster",
        default="multi-node",
        help="packaged cluster name (multi-node, multi-node-decorrelated) or a cluster YAML "
        "(default: %(default)s)",
    )
    cmp.add_argument(
        "--shapes",
        type=csv,
        default=HELD_OUT_SHAPES,
        help="comma-separated built-in shapes (default: %(default)s)",
    )
    cmp.add_argument("--repeats", type=int, default=5, help="repeats per shape (default: 5)")
    cmp.add_argument("--seed", type=int, default=0, help="base seed (default: %(default)s)")
    cmp.add_argument(
        "--time-scale", type=float, default=1.0, help="stretch/compress every shape in time"
    )
    cmp.add_argument(
        "--out", default="results/placement", help="output folder (default: %(default)s)"
    )
    cmp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cmp.set_defaults(func=_placement_compare)
