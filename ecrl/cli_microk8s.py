"""``ecrl experiment --backend microk8s``: flags and glue (the backend is
:mod:`ecrl.experiment.microk8s_backend`)."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import replace
from pathlib import Path

from ecrl.errors import ConfigError

EPILOG = (
    "  ecrl experiment --backend microk8s --shapes step,bursty --repeats 5 --set image.tag=0.6.0\n"
    "  ecrl experiment --backend microk8s --dry-run          # print every command, run none"
)


def add_microk8s_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--backend microk8s (the real box; make deploy first)")
    g.add_argument(
        "--kubectl", default=None, help="kubectl command (default: 'microk8s kubectl' if present)"
    )
    g.add_argument("--helm", default=None, help="helm command (default: 'microk8s helm3')")
    g.add_argument("--namespace", default="ecrl", help="release namespace (default: ecrl)")
    g.add_argument("--release", default="ecrl", help="Helm release (default: ecrl)")
    g.add_argument("--chart", default=None, help="chart folder (default: deploy/helm/ecrl)")
    g.add_argument(
        "--set", dest="helm_set", action="append", default=[], metavar="KEY=VALUE",
        help="extra Helm value for every mode switch (repeatable)",
    )  # fmt: skip
    g.add_argument("--prometheus-url", default=None, help="skip the Prometheus port-forward")
    g.add_argument("--triton-url", default=None, help="Triton HTTP URL (skip the port-forward)")
    g.add_argument("--triton-grpc", default=None, help="Triton gRPC HOST:PORT")
    g.add_argument("--warmup", type=float, default=30.0, help="unmeasured seconds per run (30)")
    g.add_argument(
        "--data-plane-time-scale", type=float, default=1.0,
        help="service-time factor of the data plane (1 on the box; 4 for the testbed emulator)",
    )  # fmt: skip
    g.add_argument("--dry-run", action="store_true", help="print every command, run none")


def run_microk8s(args: argparse.Namespace, cfg, shapes, slo_p95_s: float):
    """(cfg, kpis, series), or None after a dry run."""
    from ecrl.experiment.microk8s_backend import (
        MICROK8S_MODES,
        Microk8sTarget,
        Shell,
        default_tool,
        run_experiment_microk8s,
    )
    from ecrl.experiment.runner import DEFAULT_MODES
    from ecrl.experiment.testbed_backend import check_modes

    if args.modes == DEFAULT_MODES:
        cfg = replace(cfg, modes=MICROK8S_MODES)
    check_modes(cfg.modes, MICROK8S_MODES, "microk8s")
    for value in args.helm_set:
        if "=" not in value:
            raise ConfigError("command line", "--set", f"{value!r} is not KEY=VALUE")
    target = Microk8sTarget(
        kubectl=tuple(shlex.split(args.kubectl))
        if args.kubectl
        else default_tool("kubectl", "kubectl"),
        helm=tuple(shlex.split(args.helm)) if args.helm else default_tool("helm3", "helm"),
        release=args.release,
        namespace=args.namespace,
        prom_url=args.prometheus_url,
        triton_url=args.triton_url,
        triton_grpc=args.triton_grpc,
        helm_set=tuple(args.helm_set),
        warmup_s=args.warmup,
        data_plane_time_scale=args.data_plane_time_scale,
        **({"chart": Path(args.chart)} if args.chart else {}),
    )
    out = run_experiment_microk8s(
        cfg,
        shapes,
        target,
        Path(args.out),
        slo_p95_s,
        shell=Shell(dry_run=args.dry_run),
        progress=not args.no_progress,
    )
    return None if out is None else (cfg, *out)
