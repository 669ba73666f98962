"""The extender's one frozen config, built from flags and validated before anything starts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ecrl.errors import ConfigError

SCHEDULER_HTTP_TIMEOUT_S = 5.0
"""``httpTimeout`` of our extender in deploy/testbed/scheduler-config.yaml (whole call)."""
MAX_SCORER_TIMEOUT_S = SCHEDULER_HTTP_TIMEOUT_S / 2
"""The policy-server deadline must leave the call time to answer fail-open in time."""
LOG_LEVELS = ("debug", "info", "warning", "error")
MIRROR_PACKAGED, MIRROR_NONE = "packaged", "none"
CACHES = ("watch", "list")
"""The two cluster caches (services.scheduler_extender.informer / .cache)."""


@dataclass(frozen=True)
class ExtenderConfig:
    """Everything the extender process needs; :meth:`validate` names a bad field."""

    host: str = "127.0.0.1"
    """Listen address (loopback by default: the testbed's scheduler runs on the same host)."""
    port: int = 8888
    """ecrl.testbed.cluster.DEFAULT_EXTENDER_URL points the scheduler here."""
    kubeconfig: Path | None = None
    """None: in-cluster service account, else ~/.kube/config."""
    policy_server: str | None = None
    """HOST:PORT of the policy server's gRPC ScoreNodes; None scores locally."""
    scorer_timeout_s: float = 1.0
    """Deadline of one ScoreNodes call; well under the scheduler's 5 s httpTimeout."""
    mirror: str = MIRROR_PACKAGED
    """With ``policy_server``: the scorer file scored in-process while the policy server
    serves the same version (services.scheduler_extender.mirror); ``packaged`` = the one
    shipped in the package (the policy server's default), ``none`` = always ScoreNodes."""
    mirror_sync_s: float = 2.0
    """Seconds between checks of the policy server's scorer version (and the file)."""
    workers: int = 1
    """gunicorn worker processes (each keeps its own cluster cache and metrics)."""
    threads: int = 4
    """Threads per worker (gthread): the scheduler may call filter for one pod while binding."""
    cache: str = "watch"
    """``watch``: list + watch (an informer); ``list``: re-list every ``refresh_interval_s``."""
    refresh_interval_s: float = 2.0
    """Seconds between cluster lists (``cache="list"``)."""
    max_cache_age_s: float = 10.0
    """An older snapshot (apiserver unreachable) is not trusted: the verbs fail open."""
    log_level: str = "info"

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def validate(self, source: str = "command line") -> ExtenderConfig:
        def bad(flag: str, problem: str) -> ConfigError:
            return ConfigError(source, flag, problem)

        if not self.host:
            raise bad("--listen", "host is empty (use HOST:PORT, e.g. 127.0.0.1:8888)")
        if not 1 <= self.port <= 65535:
            raise bad("--listen", f"port {self.port} is not in 1..65535")
        if self.kubeconfig is not None and not self.kubeconfig.is_file():
            raise bad("--kubeconfig", f"{self.kubeconfig} is not a file")
        if self.policy_server is not None:
            host, sep, port = self.policy_server.rpartition(":")
            if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
                raise bad("--policy-server", f"{self.policy_server!r} is not HOST:PORT")
        if not (math.isfinite(self.scorer_timeout_s) and self.scorer_timeout_s > 0):
            raise bad("--scorer-timeout", f"must be > 0 s, got {self.scorer_timeout_s}")
        if self.scorer_timeout_s > MAX_SCORER_TIMEOUT_S:
            raise bad(
                "--scorer-timeout",
                f"{self.scorer_timeout_s} s is too close to the scheduler's "
                f"{SCHEDULER_HTTP_TIMEOUT_S:g} s httpTimeout (max {MAX_SCORER_TIMEOUT_S:g} s)",
            )
        if not self.mirror:
            raise bad("--mirror", f"empty (a file, {MIRROR_PACKAGED!r} or {MIRROR_NONE!r})")
        if not (math.isfinite(self.mirror_sync_s) and 0.1 <= self.mirror_sync_s <= 300):
            raise bad("--mirror-sync", f"must be in 0.1..300 s, got {self.mirror_sync_s}")
        if not 1 <= self.workers <= 64:
            raise bad("--workers", f"must be in 1..64, got {self.workers}")
        if not 1 <= self.threads <= 64:
            raise bad("--threads", f"must be in 1..64, got {self.threads}")
        if self.cache not in CACHES:
            raise bad("--cache", f"must be one of {', '.join(CACHES)}, got {self.cache!r}")
        if not (math.isfinite(self.refresh_interval_s) and 0.1 <= self.refresh_interval_s <= 60):
            raise bad("--refresh-interval", f"must be in 0.1..60, got {self.refresh_interval_s}")
        age_s = self.max_cache_age_s
        if not (math.isfinite(age_s) and age_s > self.refresh_interval_s and age_s >= 2.0):
            raise bad("--max-cache-age", "must be ≥ 2 s and longer than --refresh-interval")
        if self.log_level not in LOG_LEVELS:
            raise bad("--log-level", f"must be one of {', '.join(LOG_LEVELS)}")
        return self


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT' or '[v6]:PORT' → (host, port); ValueError with a reason otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8888)")
    return host.removeprefix("[").removesuffix("]"), int(port)
