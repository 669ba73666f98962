"""``python -m services.scheduler_extender.actuator``: the control loop as its own process."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from ecrl import logs
from ecrl.errors import ConfigError
from services.lifecycle import stop_on_signals

from .config import LOG_LEVELS, ActuatorConfig

log = logging.getLogger("ecrl.actuator")
SERVICE = "actuator"
USER_AGENT = "ecrl-actuator"
"""Our field manager name: who changed spec.replicas shows in the Deployment's managedFields."""

EPILOG = """examples:
  # against the testbed, with the collector's HTTP API and a policy server running locally
  python -m services.scheduler_extender.actuator \\
      --kubeconfig ~/.cache/ecrl/testbed/kwok/clusters/ecrl/kubeconfig.yaml \\
      --collector-url http://127.0.0.1:9102 --policy-server 127.0.0.1:50051 \\
      --triton-url http://127.0.0.1:8000 --audit-log /tmp/ecrl-audit.jsonl
  # shadow mode: decide and audit every 5 s, change nothing
  python -m services.scheduler_extender.actuator --shadow --audit-log audit.jsonl
  # then: tail -f audit.jsonl | jq .reason ; curl -s 127.0.0.1:9103/metrics | grep ecrl_actuator
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the flag and the problem), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> _Parser:
    d = ActuatorConfig()
    p = _Parser(
        prog="python -m services.scheduler_extender.actuator",
        description="The scaling actuator: every period, read the collector's state, ask the "
        "policy server, clamp with the safety envelope, apply (scale subresource, in-place pod "
        "resize, Triton load-with-config) and audit. Falls back to the HPA-equivalent rule on "
        "stale state or any policy-server failure; only the Lease holder acts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--kubeconfig", type=Path, help="default: in-cluster, else ~/.kube/config")
    add("--namespace", default=d.namespace, help=f"of the Deployment and Lease ({d.namespace})")
    add("--deployment", default=d.deployment, help=f"the managed Deployment ({d.deployment})")
    add("--collector-url", default=d.collector_url, help=f"collector HTTP API ({d.collector_url})")
    add("--policy-server", default=d.policy_server, metavar="HOST:PORT")
    add(
        "--policy-timeout",
        type=float,
        default=d.policy_timeout_s,
        metavar="S",
        help=f"Decide deadline; slower is a fallback tick (default {d.policy_timeout_s})",
    )
    add("--triton-url", default=d.triton_url, help="Triton HTTP, for load-with-config")
    add(
        "--triton-pod-port",
        type=int,
        default=None,
        metavar="PORT",
        help="real cluster: load-with-config on every ready pod at <pod IP>:PORT and keep new "
        "pods on it (default: one load at --triton-url, enough for the testbed emulator)",
    )
    add("--period", type=float, default=d.period_s, metavar="S", help="seconds between ticks")
    add(
        "--hold-ticks",
        type=int,
        default=d.hold_ticks,
        metavar="N",
        help=f"ticks to hold on a stale state before falling back (default {d.hold_ticks})",
    )
    add(
        "--max-state-age",
        type=float,
        default=d.max_state_age_s,
        metavar="S",
        help=f"an older collector state is stale (default {d.max_state_age_s})",
    )
    add("--shadow", action="store_true", help="decide and audit, never act")
    add("--audit-log", type=Path, metavar="PATH", help="JSON lines, one per tick")
    add("--min-replicas", type=int, default=d.min_replicas)
    add("--max-replicas", type=int, default=d.max_replicas)
    add("--lease-name", default=d.lease_name)
    add(
        "--lease-renew",
        type=float,
        default=d.lease_renew_s,
        metavar="S",
        help=f"seconds between Lease renewals (default {d.lease_renew_s}; duration 15 s)",
    )
    add("--identity", default="", help="Lease holder identity (default HOSTNAME-PID)")
    add(
        "--metrics-listen",
        default=d.metrics_listen,
        metavar="HOST:PORT",
        help=f"/metrics address ({d.metrics_listen}); 'off' disables",
    )
    add("--log-level", choices=LOG_LEVELS, default=d.log_level)
    return p


def config_from_args(args: argparse.Namespace) -> ActuatorConfig:
    return ActuatorConfig(
        kubeconfig=args.kubeconfig,
        namespace=args.namespace,
        deployment=args.deployment,
        collector_url=args.collector_url,
        policy_server=args.policy_server,
        policy_timeout_s=args.policy_timeout,
        triton_url=args.triton_url,
        triton_pod_port=args.triton_pod_port,
        period_s=args.period,
        hold_ticks=args.hold_ticks,
        max_state_age_s=args.max_state_age,
        shadow=args.shadow,
        audit_log=args.audit_log,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        lease_name=args.lease_name,
        lease_renew_s=args.lease_renew,
        identity=args.identity or f"{socket.gethostname()}-{os.getpid()}",
        metrics_listen=None if args.metrics_listen == "off" else args.metrics_listen,
        log_level=args.log_level,
    ).validate()


def _api_client(cfg: ActuatorConfig):
    from services.scheduler_extender.kube import api_client

    try:
        api = api_client(cfg.kubeconfig)
    except Exception as exc:  # the client raises ConfigException, yaml or OS errors
        why = " ".join(str(exc).split())[:300]
        raise ConfigError("command line", "--kubeconfig", f"cannot load: {why}") from exc
    api.user_agent = USER_AGENT  # the field manager in managedFields and audit logs
    return api


def run(cfg: ActuatorConfig, api, stop: threading.Event) -> None:
    """Wire the parts and tick every period until ``stop`` is set."""
    from prometheus_client import start_http_server

    from services.policy_server.client import PolicyClient

    from .apply import KubeApplier, PodTritons, TritonLoader
    from .audit import AuditLog
    from .config import LEASE_DURATION_S
    from .leader import LeaseElector
    from .loop import Actuator, TickSettings
    from .metrics import ActuatorMetrics
    from .state import HttpStateSource

    metrics = ActuatorMetrics()
    if cfg.metrics_listen is not None:
        host, _, port = cfg.metrics_listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]"), registry=metrics.registry)
    elector = LeaseElector(
        api,
        cfg.namespace,
        cfg.lease_name,
        cfg.identity,
        LEASE_DURATION_S,
        cfg.lease_renew_s,
        on_change=lambda leader: metrics.leader.set(1 if leader else 0),
    )
    audit = AuditLog(cfg.audit_log) if cfg.audit_log is not None else None
    policy = PolicyClient(cfg.policy_server, cfg.policy_timeout_s)
    applier = KubeApplier(api, cfg.namespace, cfg.deployment, TritonLoader(cfg.triton_url).load)
    if cfg.triton_pod_port is not None:
        pods = PodTritons(applier.ready_pods, cfg.triton_pod_port)
        applier.triton, applier.upkeep = pods.load, pods.maintain
    actuator = Actuator(
        TickSettings(
            min_replicas=cfg.min_replicas,
            max_replicas=cfg.max_replicas,
            hold_ticks=cfg.hold_ticks,
            max_state_age_s=cfg.max_state_age_s,
            shadow=cfg.shadow,
        ),
        HttpStateSource(cfg.collector_url),
        policy,
        applier,
        elector,
        audit,
        metrics,
    )
    log.info("actuator started", extra={"identity": cfg.identity, "shadow": cfg.shadow})
    elector.start()
    try:
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                actuator.tick()
            except Exception:  # a bug must not end the loop: logged, the next tick tries
                log.exception("tick failed")
            next_at += cfg.period_s
            now = time.monotonic()
            if now > next_at:  # an overrun skips the missed slots
                next_at += cfg.period_s * ((now - next_at) // cfg.period_s + 1)
            stop.wait(next_at - now)
    finally:
        elector.stop(release=True)
        policy.close()
        if audit is not None:
            audit.close()
        log.info("actuator stopped")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        api = _api_client(cfg)
    except ConfigError as exc:
        parser.error(f"argument {exc.field}: {exc.problem}")
    logs.setup(SERVICE, cfg.log_level)
    stop = stop_on_signals()
    run(cfg, api, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
