"""Command line of the collector: ``python -m services.collector --help``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from ecrl import logs
from ecrl.config import from_mapping, load_yaml
from ecrl.errors import ConfigError
from services.flags import flags_to_mapping
from services.lifecycle import stop_on_signals

from .config import FLAGS, CollectorConfig
from .grpc_api import StartError

PROG = "collector"
ENV_PREFIX = "ECRL_COLLECTOR_"
EPILOG = f"""\
examples:
  # the testbed: Prometheus and the data-plane emulator on loopback
  python -m services.collector --prometheus http://127.0.0.1:9090 \\
      --triton-url http://127.0.0.1:8000 --namespace default --deployment mobilenetv4-triton \\
      --period 5 --grpc-listen 127.0.0.1:50052 --http-listen 127.0.0.1:9102 \\
      --min-replicas 1 --max-replicas 4 --slo-p95 0.15 --log-level info

  # settings from a YAML file (keys are the field names, e.g. stale_after_s: 20), a flag wins
  python -m services.collector --config collector.yaml --period 2

  # look at it
  curl -s 127.0.0.1:9102/state | jq .features
  grpcurl -plaintext 127.0.0.1:50052 ecrl.v1.StateService/GetState

A tick whose required inputs (replicas, pods, requests, free GPU slots, Triton's batching
config) are missing or older than --stale-after produces no state: the last state is served
with its age (GetState trailing metadata ecrl-state-age-s; /state age_s and stale). Missing
optional inputs are listed in missing_inputs and flagged in the state, never filled in.
Every flag can also come from the environment: {ENV_PREFIX}<FLAG> with dashes as underscores,
e.g. {ENV_PREFIX}PROMETHEUS=http://prometheus:9090. Exit codes: 0 stopped by SIGTERM/SIGINT,
1 could not start, 2 bad configuration.
"""

HELP = {
    "prometheus_url": ("URL", "Prometheus base URL (default http://127.0.0.1:9090)"),
    "triton_url": ("URL", "Triton HTTP endpoint for the model config (default :8000)"),
    "namespace": ("NAME", "namespace of the Deployment (default default)"),
    "deployment": ("NAME", "the managed Deployment (default mobilenetv4-triton)"),
    "model": ("NAME", "Triton model name (default mobilenetv4)"),
    "period_s": ("SECONDS", "one state per period, the control tick (default 5)"),
    "stale_after_s": ("SECONDS", "older samples count as missing (default 15 = 3 scrapes)"),
    "rate_window_s": ("SECONDS", "rate() window (default 30)"),
    "query_timeout_s": ("SECONDS", "timeout of each query and the config read (default 2)"),
    "query_workers": ("N", "queries in flight at once (default 4)"),
    "history": ("N", "states kept in memory (default 120)"),
    "min_replicas": ("N", "envelope: fewest replicas (default 1)"),
    "max_replicas": ("N", "envelope: most replicas (default 4)"),
    "slo_p95_s": ("SECONDS", "p95 latency target (default 0.15)"),
    "time_scale": ("X", "data plane N× slower than the box (testbed emulator: 4; default 1)"),
    "gpu_resource": ("NAME", "GPU extended resource (default nvidia.com/gpu)"),
    "gpu_node_label": ("LABEL", "dcgm-exporter label with the node name (default Hostname)"),
    "grpc_listen": ("HOST:PORT", "StateService address ('' = off; default 127.0.0.1:50052)"),
    "http_listen": ("HOST:PORT", "/state, /metrics, /healthz ('' = off; default 127.0.0.1:9102)"),
    "log_level": ("LEVEL", "debug, info, warning or error (default info)"),
}
_NUMBERS: dict[str, type] = {
    "period_s": float,
    "stale_after_s": float,
    "rate_window_s": float,
    "query_timeout_s": float,
    "query_workers": int,
    "history": int,
    "min_replicas": int,
    "max_replicas": int,
    "slo_p95_s": float,
    "time_scale": float,
}
_OPTIONAL = ("grpc_listen", "http_listen")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the flag and the problem), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Build the policy's state from Prometheus (PromQL) and Triton, one per "
        "tick; serve it over gRPC (ecrl.v1.StateService) and HTTP JSON, with /metrics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML file of settings (field names)")
    for name, flag in FLAGS.items():
        metavar, text = HELP[name]
        p.add_argument(flag, metavar=metavar, help=text)
    return p


def config_from_args(args: argparse.Namespace) -> CollectorConfig:
    """YAML file, then flags (else environment) → validated config; ConfigError names the field."""
    base = load_yaml(args.config) if args.config else {}
    data = flags_to_mapping(args, FLAGS, _NUMBERS, _OPTIONAL, ENV_PREFIX, base)
    return from_mapping(CollectorConfig, data, source=args.config or "flags")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        if exc.field in FLAGS:
            print(f"{PROG}: error: {FLAGS[exc.field]}: {exc.problem}", file=sys.stderr)
        else:  # the --config file itself (not found, bad YAML, unknown key): name it
            print(f"{PROG}: error: --config: {exc}", file=sys.stderr)
        return 2
    logs.setup("collector", config.log_level)
    from .server import CollectorServer

    try:
        server = CollectorServer(config)
        server.start()
    except StartError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    stop = stop_on_signals()
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
