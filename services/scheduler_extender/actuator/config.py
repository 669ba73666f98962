"""The actuator's one frozen config, built from flags and validated before anything starts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ecrl.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")
LEASE_DURATION_S = 15.0
"""Lease duration: client-go leader election's default ``LeaseDuration`` (15 s)."""


def _hostport_ok(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 1 <= int(port) <= 65535)


@dataclass(frozen=True)
class ActuatorConfig:
    """Everything the actuator process needs; :meth:`validate` names the bad flag."""

    kubeconfig: Path | None = None
    """None: in-cluster service account, else ~/.kube/config."""
    namespace: str = "default"
    deployment: str = "mobilenetv4-triton"
    collector_url: str = "http://127.0.0.1:9102"
    """Base URL of the collector's HTTP API (``/state`` carries values and the Observation)."""
    policy_server: str = "127.0.0.1:50051"
    policy_timeout_s: float = 0.5
    """Deadline of one Decide call; a slower answer is a fallback tick."""
    triton_url: str = "http://127.0.0.1:8000"
    """Triton (or the emulator's) HTTP endpoint for model-control load-with-config."""
    triton_pod_port: int | None = None
    """Set on a real cluster: load every ready pod at ``http://<pod IP>:<port>`` and keep new
    and restarted pods on the target config (a Service reaches one pod). None: one load at
    ``triton_url`` (the testbed emulator, whose endpoint stands for the model repository)."""
    period_s: float = 5.0
    """Seconds between ticks (DESIGN.md default)."""
    hold_ticks: int = 2
    """Ticks to hold on a stale/missing state before the HPA-equivalent fallback acts."""
    max_state_age_s: float = 15.0
    """An older collector state is stale (default three default periods)."""
    shadow: bool = False
    """Decide and audit, never act."""
    audit_log: Path | None = None
    min_replicas: int = 1
    max_replicas: int = 4
    lease_name: str = "ecrl-actuator"
    lease_renew_s: float = 2.0
    lease_duration_s: float = LEASE_DURATION_S
    identity: str = ""
    """Lease holder identity; empty: ``hostname-pid``."""
    metrics_listen: str | None = "127.0.0.1:9103"
    log_level: str = "info"

    def validate(self, source: str = "command line") -> ActuatorConfig:
        def bad(flag: str, problem: str) -> ConfigError:
            return ConfigError(source, flag, problem)

        def positive(value: float) -> bool:
            return math.isfinite(value) and value > 0

        if self.kubeconfig is not None and not self.kubeconfig.is_file():
            raise bad("--kubeconfig", f"{self.kubeconfig} is not a file")
        if not self.namespace:
            raise bad("--namespace", "must not be empty")
        if not self.deployment:
            raise bad("--deployment", "must not be empty")
        if not self.collector_url.startswith(("http://", "https://")):
            raise bad("--collector-url", f"{self.collector_url!r} is not an http(s) URL")
        if not _hostport_ok(self.policy_server):
            raise bad("--policy-server", f"{self.policy_server!r} is not HOST:PORT")
        if not self.triton_url.startswith(("http://", "https://")):
            raise bad("--triton-url", f"{self.triton_url!r} is not an http(s) URL")
        if self.triton_pod_port is not None and not 1 <= self.triton_pod_port <= 65535:
            raise bad("--triton-pod-port", f"must be in 1..65535, got {self.triton_pod_port}")
        if not (positive(self.period_s) and 0.2 <= self.period_s <= 3600):
            raise bad("--period", f"must be in 0.2..3600 s, got {self.period_s}")
        if not (positive(self.policy_timeout_s) and self.policy_timeout_s < self.period_s):
            raise bad("--policy-timeout", "must be > 0 and shorter than --period")
        if not 0 <= self.hold_ticks <= 100:
            raise bad("--hold-ticks", f"must be in 0..100, got {self.hold_ticks}")
        if not positive(self.max_state_age_s):
            raise bad("--max-state-age", f"must be > 0 s, got {self.max_state_age_s}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise bad("--min-replicas", "must be in 0..--max-replicas")
        if self.max_replicas > 1000:
            raise bad("--max-replicas", f"must be <= 1000, got {self.max_replicas}")
        if not self.lease_name:
            raise bad("--lease-name", "must not be empty")
        if not (positive(self.lease_renew_s) and self.lease_renew_s < self.lease_duration_s / 2):
            raise bad(
                "--lease-renew",
                f"must be > 0 and under half the {self.lease_duration_s:g} s lease duration",
            )
        if self.metrics_listen is not None and not _hostport_ok(self.metrics_listen):
            raise bad("--metrics-listen", f"{self.metrics_listen!r} is not HOST:PORT")
        if self.log_level not in LOG_LEVELS:
            raise bad("--log-level", f"must be one of {', '.join(LOG_LEVELS)}")
        return self
