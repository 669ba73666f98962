"""``python -m services.scheduler_extender``: the extender on gunicorn (see the package doc)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

from gunicorn.app.base import BaseApplication

from ecrl import logs
from ecrl.errors import ConfigError, Temporary
from services.scheduler_extender.config import (
    CACHES,
    LOG_LEVELS,
    MIRROR_NONE,
    MIRROR_PACKAGED,
    ExtenderConfig,
    parse_listen,
)

log = logging.getLogger("ecrl.extender")
SERVICE = "scheduler-extender"
GIL_SWITCH_INTERVAL_S = 0.0005
"""How soon a request thread gets the GIL from a busy thread (Python's default: 5 ms).

The cache thread's re-list holds the GIL for ~10–15 ms of CPU every 2 s with 100 nodes
(the kubernetes client and decoding ~0.5 MB of node JSON); at the default interval a
request arriving meanwhile waits up to 5 ms per turn — the tail of issue 5's p99 ≤ 3 ms.
"""

EPILOG = """examples:
  # against the testbed (make testbed), scoring locally with the default scheduler's scores
  python -m services.scheduler_extender \\
      --kubeconfig ~/.cache/ecrl/testbed/kwok/clusters/ecrl/kubeconfig.yaml
  # scores from the policy server's ScoreNodes, 0.5 s deadline, two worker processes
  python -m services.scheduler_extender --policy-server 127.0.0.1:50051 --scorer-timeout 0.5 \\
      --workers 2
  # then: curl -s 127.0.0.1:8888/readyz ; curl -s 127.0.0.1:8888/metrics | grep ecrl_extender
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the flag and the problem), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _listen(value: str) -> tuple[str, int]:
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> _Parser:
    p = _Parser(
        prog="python -m services.scheduler_extender",
        description="kube-scheduler extender: GPU-slot-aware /filter, /prioritize from a node "
        "scorer (local, or the policy server), optional /bind; /metrics, /healthz, /readyz. "
        "Fails open: an internal error keeps every node and gives neutral scores.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = ExtenderConfig()
    p.add_argument(
        "--listen",
        type=_listen,
        metavar="HOST:PORT",
        default=(d.host, d.port),
        help=f"listen address (default {d.listen}, the scheduler's urlPrefix in the testbed)",
    )
    p.add_argument("--kubeconfig", type=Path, help="default: in-cluster, else ~/.kube/config")
    p.add_argument(
        "--policy-server",
        metavar="HOST:PORT",
        help="score nodes with the policy "
        "server's ScoreNodes (default: locally, the default scheduler's scores)",
    )
    p.add_argument(
        "--scorer-timeout",
        type=float,
        default=d.scorer_timeout_s,
        metavar="S",
        help=f"deadline of one scoring call (default {d.scorer_timeout_s} s; the "
        "scheduler allows the whole call 5 s)",
    )
    p.add_argument(
        "--mirror",
        default=d.mirror,
        metavar="MODEL",
        help="with --policy-server: score in-process with this ONNX node scorer while the "
        "policy server reports serving the same version, else ask its ScoreNodes; "
        f"'{MIRROR_PACKAGED}' (default): the scorer shipped in the package, the policy "
        f"server's default; '{MIRROR_NONE}': ScoreNodes for every request",
    )
    p.add_argument(
        "--mirror-sync",
        type=float,
        default=d.mirror_sync_s,
        metavar="S",
        help=f"seconds between checks of the policy server's scorer version (default "
        f"{d.mirror_sync_s:g}); a model swap there reaches the extender within this",
    )
    p.add_argument("--workers", type=int, default=d.workers, help="gunicorn worker processes")
    p.add_argument("--threads", type=int, default=d.threads, help="threads per worker")
    p.add_argument(
        "--cache",
        choices=CACHES,
        default=d.cache,
        help="how the node/pod view is kept: 'watch' = list + watch, only changes are "
        "decoded (default); 'list' = re-list every --refresh-interval",
    )
    p.add_argument(
        "--refresh-interval",
        type=float,
        default=d.refresh_interval_s,
        metavar="S",
        help="seconds between node/pod lists with --cache list (default 2)",
    )
    p.add_argument(
        "--max-cache-age",
        type=float,
        default=d.max_cache_age_s,
        metavar="S",
        help="older cluster data is not trusted: fail open (default 10)",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, default=d.log_level)
    return p


def config_from_args(args: argparse.Namespace) -> ExtenderConfig:
    host, port = args.listen
    return ExtenderConfig(
        host=host,
        port=port,
        kubeconfig=args.kubeconfig,
        policy_server=args.policy_server,
        scorer_timeout_s=args.scorer_timeout,
        mirror=args.mirror,
        mirror_sync_s=args.mirror_sync,
        workers=args.workers,
        threads=args.threads,
        cache=args.cache,
        refresh_interval_s=args.refresh_interval,
        max_cache_age_s=args.max_cache_age,
        log_level=args.log_level,
    ).validate()


def build_app(cfg: ExtenderConfig):
    """Wire the parts of one worker: Kubernetes client, cache, scorer, extender, Flask app."""
    from prometheus_client import CollectorRegistry

    from services.scheduler_extender.app import create_app
    from services.scheduler_extender.cache import ClusterCache
    from services.scheduler_extender.extender import Extender
    from services.scheduler_extender.informer import InformerCache
    from services.scheduler_extender.kube import KubeBinder, KubeSource, api_client
    from services.scheduler_extender.scoring import LocalScorer, Scorer

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # this worker process only
    registry = CollectorRegistry()
    api = api_client(cfg.kubeconfig)
    source = KubeSource(api)
    cache: ClusterCache | InformerCache
    if cfg.cache == "watch":
        cache = InformerCache(source, cfg.max_cache_age_s, registry=registry)
        warm = cache.sync
    else:
        cache = ClusterCache(source, cfg.refresh_interval_s, cfg.max_cache_age_s, registry=registry)
        warm = cache.refresh
    try:
        warm()  # warm before the first request; the threads keep trying otherwise
    except Temporary as exc:
        log.warning(
            "first cluster list failed; failing open until one succeeds",
            extra={"error": str(exc)[:300]},
        )
    cache.start()
    scorer: Scorer = policy_server_scorer(cfg, registry) if cfg.policy_server else LocalScorer()
    log.info(
        "extender worker ready",
        extra={"scorer": scorer.name, "cache": cfg.cache, "listen": cfg.listen},
    )
    return create_app(Extender(cache, scorer, KubeBinder(api)), registry, lambda: cache.ready)


def policy_server_scorer(cfg: ExtenderConfig, registry):
    """``ScoreNodes`` of ``cfg.policy_server``, mirrored in-process unless ``--mirror none``."""
    from services.scheduler_extender.scoring import PolicyServerScorer

    remote = PolicyServerScorer(cfg.policy_server, cfg.scorer_timeout_s)
    if cfg.mirror == MIRROR_NONE:
        return remote
    from services.policy_server.config import default_scorer_path
    from services.scheduler_extender.mirror import MirroredScorer

    path = default_scorer_path() if cfg.mirror == MIRROR_PACKAGED else cfg.mirror
    mirror = MirroredScorer(remote, path, cfg.mirror_sync_s, registry)
    first = mirror.sync()  # before the first request; the thread follows from here
    log.info(
        "scorer mirror",
        extra={
            "where": first.where.value,
            "local_version": first.local_version,
            "server_version": first.server_version,
            "path": path,
        },
    )
    mirror.start()
    return mirror


KEEPALIVE_S = 120
"""Idle keep-alive connections stay open longer than kube-scheduler keeps them (its extender
client uses Go's default transport: IdleConnTimeout 90 s). With gunicorn's default of 5 s,
a scheduler calling about every 5 s — one pod per 5-s actuator tick — sometimes sent its POST
on a connection gunicorn was closing; Go does not retry a POST, the ignorable extender was
skipped, and that pod was placed without it (seen once in the rl e2e test)."""


def gunicorn_options(cfg: ExtenderConfig) -> dict:
    """gunicorn settings; logging goes through ecrl.logs' JSON formatter like every service."""
    return {
        "bind": [cfg.listen],
        "workers": cfg.workers,
        "worker_class": "gthread",
        "threads": cfg.threads,
        "timeout": 30,
        "graceful_timeout": 5,
        "keepalive": KEEPALIVE_S,
        "preload_app": False,  # each worker builds its own cache thread after the fork
        "proc_name": "ecrl-scheduler-extender",
        "control_socket_disable": True,
        "loglevel": cfg.log_level,
        "logconfig_dict": {
            "root": {"level": cfg.log_level.upper(), "handlers": ["json"]},
            "loggers": {
                "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
                "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
            },
            "handlers": {
                "json": {
                    "class": "logging.StreamHandler",
                    "formatter": "json",
                    "stream": "ext://sys.stderr",
                }
            },
            "formatters": {"json": {"()": "ecrl.logs.JsonFormatter", "service": SERVICE}},
        },
    }


class ExtenderServer(BaseApplication):
    """gunicorn, configured from an :class:`ExtenderConfig` instead of its own command line."""

    def __init__(self, cfg: ExtenderConfig) -> None:
        self.extender_config = cfg
        super().__init__(prog="services.scheduler_extender")

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.extender_config).items():
            self.cfg.set(key, value)

    def load(self):
        return build_app(self.extender_config)


def _check_kubeconfig(cfg: ExtenderConfig) -> None:
    """Fail at start, naming the flag, when no Kubernetes credentials can be loaded."""
    from services.scheduler_extender.kube import api_client

    try:
        api_client(cfg.kubeconfig).close()
    except Exception as exc:  # the client raises ConfigException, yaml or OS errors
        why = " ".join(str(exc).split())[:300]  # one line
        raise ConfigError("command line", "--kubeconfig", f"cannot load: {why}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        _check_kubeconfig(cfg)
    except ConfigError as exc:
        parser.error(f"argument {exc.field}: {exc.problem}")
    logs.setup(SERVICE, cfg.log_level)
    ExtenderServer(cfg).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
