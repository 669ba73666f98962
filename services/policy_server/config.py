"""The policy server's configuration: one frozen dataclass, validated at start.

Built from command-line flags (or ``ECRL_POLICY_*`` environment variables, see
:mod:`.__main__`) through :func:`ecrl.config.from_mapping`, so an error names the field and
the allowed range; :data:`FLAGS` maps each field to its flag for the one-line CLI error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ecrl.config import bounds
from ecrl.policy_model import MODELS_DIR, builtin_policy_path

DEFAULT_SCORER = MODELS_DIR / "placement.onnx"
LogLevel = Literal["debug", "info", "warning", "error"]


def default_scorer_path() -> str | None:
    """The packaged learned node scorer, if this build ships one."""
    return str(DEFAULT_SCORER) if DEFAULT_SCORER.is_file() else None


def parse_hostport(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ValueError says what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT with a port in [0, 65535]")
    return host, int(port)


@dataclass(frozen=True)
class ServerConfig:
    """Everything the policy server needs to start."""

    policy_path: str | None = field(default_factory=builtin_policy_path)
    """ONNX scaling policy; watched, may appear later. None = heuristic only."""
    scorer_path: str | None = field(default_factory=default_scorer_path)
    """ONNX node scorer; None = the default scheduler's scores (kube-default)."""
    listen: str = "127.0.0.1:50051"
    """gRPC address; loopback by default (expose it deliberately, with TLS)."""
    metrics_listen: str | None = "127.0.0.1:9101"
    """Prometheus HTTP address; None disables the endpoint."""
    reload_interval_s: float = field(default=2.0, metadata=bounds(0.0, 3600.0, "0 disables"))
    """How often the model files are checked for a change (0: never, load once)."""
    tls_cert: str | None = None
    """PEM server certificate (chain); with ``tls_key`` turns TLS on."""
    tls_key: str | None = None
    tls_client_ca: str | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."""
    max_concurrent_rpcs: int = field(default=0, metadata=bounds(0, 100_000, "0 = no limit"))
    """Calls in flight at once; more are refused with RESOURCE_EXHAUSTED, which the clients
    treat as "retry later". 0 (the default) sets no limit, like the default thread-pool
    server's unbounded queue: calls are served one after another on the event loop (a
    decision takes well under a millisecond), and gRPC's limiter costs time on every call."""
    grace_s: float = field(default=5.0, metadata=bounds(0.0, 300.0, "seconds"))
    """On SIGTERM, how long in-flight requests may finish (inside Kubernetes' 30 s grace)."""
    deadline_margin_s: float = field(default=0.0005, metadata=bounds(0.0, 10.0, "seconds"))
    """Added to the measured decision time: less time left than that → DEADLINE_EXCEEDED."""
    log_level: LogLevel = "info"

    def validate(self) -> None:
        """Addresses parse, TLS files come in usable combinations and can be read."""
        for name in ("listen", "metrics_listen"):
            value = getattr(self, name)
            if value is not None:
                try:
                    parse_hostport(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ValueError(f"{missing}: TLS needs both a certificate and its key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca: mutual TLS needs server TLS (tls_cert, tls_key)")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{name}: {value} is not a readable file")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


FLAGS = {
    "policy_path": "--policy",
    "scorer_path": "--scorer",
    "listen": "--listen",
    "metrics_listen": "--metrics-listen",
    "reload_interval_s": "--reload-interval",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "tls_client_ca": "--tls-client-ca",
    "max_concurrent_rpcs": "--max-concurrent-rpcs",
    "grace_s": "--grace",
    "deadline_margin_s": "--deadline-margin",
    "log_level": "--log-level",
}
"""Config field → command-line flag (errors name the flag the user typed)."""
