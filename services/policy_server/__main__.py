"""Command line of the policy server: ``python -m services.policy_server --help``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ecrl import logs
from ecrl.config import from_mapping
from ecrl.errors import ConfigError
from services.flags import flags_to_mapping
from services.lifecycle import stop_on_signals

from .config import FLAGS, ServerConfig
from .server import PolicyServer, StartError

PROG = "policy-server"
ENV_PREFIX = "ECRL_POLICY_"
EPILOG = f"""\
examples:
  # the packaged policy and node scorer on loopback, metrics on :9101
  python -m services.policy_server

  # your own policy, reachable from the cluster, mutual TLS
  python -m services.policy_server --policy runs/train/rl-policy.onnx \\
      --listen 0.0.0.0:50051 --tls-cert tls/server.pem --tls-key tls/server-key.pem \\
      --tls-client-ca tls/ca.pem

  # heuristic only (no learned policy), no metrics endpoint
  python -m services.policy_server --policy '' --metrics-listen ''

  # look at it with grpcurl (reflection is on)
  grpcurl -plaintext 127.0.0.1:50051 list
  grpcurl -plaintext 127.0.0.1:50051 ecrl.v1.PolicyService/GetPolicyInfo

Every flag can also come from the environment: {ENV_PREFIX}<FLAG> with dashes as
underscores, e.g. {ENV_PREFIX}LISTEN=0.0.0.0:50051 (a flag wins over the environment).
The policy file is checked every --reload-interval seconds and swapped in when it changes
and validates; a bad file keeps the previous policy serving. Exit codes: 0 stopped by
SIGTERM/SIGINT, 1 could not start, 2 bad configuration.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve the ONNX scaling policy and node scorer over gRPC "
        "(ecrl.v1.PolicyService, grpc.health.v1, reflection) with Prometheus metrics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add(
        "--policy",
        metavar="PATH",
        help="ONNX scaling policy ('' = heuristic only; "
        "default: the packaged ecrl/models/rl-policy.onnx)",
    )
    add(
        "--scorer",
        metavar="PATH",
        help="ONNX node scorer ('' = default-scheduler scores; "
        "default: the packaged ecrl/models/placement.onnx if present)",
    )
    add("--listen", metavar="HOST:PORT", help="gRPC address (default 127.0.0.1:50051)")
    add(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="Prometheus /metrics address ('' = off; default 127.0.0.1:9101)",
    )
    add(
        "--reload-interval",
        metavar="SECONDS",
        help="check the model files for changes this often (0 = never; default 2)",
    )
    add("--tls-cert", metavar="PEM", help="server certificate (turns TLS on, needs --tls-key)")
    add("--tls-key", metavar="PEM", help="private key of --tls-cert")
    add("--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA")
    add(
        "--max-concurrent-rpcs",
        metavar="N",
        help="calls in flight at once; more get RESOURCE_EXHAUSTED (default 0 = no limit)",
    )
    add("--grace", metavar="SECONDS", help="drain time on SIGTERM (default 5)")
    add(
        "--deadline-margin",
        metavar="SECONDS",
        help="refuse a request at once when its deadline leaves less than the measured "
        "decision time plus this (default 0.0005)",
    )
    add("--log-level", metavar="LEVEL", help="debug, info, warning or error (default info)")
    return p


_NUMBERS = {
    "reload_interval_s": float,
    "max_concurrent_rpcs": int,
    "grace_s": float,
    "deadline_margin_s": float,
}
_OPTIONAL_PATHS = ("policy_path", "scorer_path", "metrics_listen")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Flags (else environment) → validated :class:`ServerConfig`; ConfigError names the flag."""
    base = None
    data = flags_to_mapping(args, FLAGS, _NUMBERS, _OPTIONAL_PATHS, ENV_PREFIX, base)
    return from_mapping(ServerConfig, data, source="flags")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        flag = FLAGS.get(exc.field, exc.field)
        print(f"{PROG}: error: {flag}: {exc.problem}", file=sys.stderr)
        return 2
    logs.setup("policy-server", config.log_level)
    server = PolicyServer(config)
    try:
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
