"""The collector's configuration: one frozen dataclass, validated at start.

Built from a YAML file (``--config``), then command-line flags, then ``ECRL_COLLECTOR_*``
environment variables (a flag wins) through :func:`ecrl.config.from_mapping`, so an error names
the field; :data:`FLAGS` maps each field to its flag for the one-line CLI error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlparse

from ecrl.config import bounds

LogLevel = Literal["debug", "info", "warning", "error"]
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
"""RFC 1123 label: what Kubernetes accepts as a namespace or Deployment name."""
MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
"""A Prometheus label name."""
SCRAPE_INTERVAL_S = 5.0
"""deploy/testbed/prometheus.yml ``global.scrape_interval``."""


def parse_hostport(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ValueError says what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT with a port in [0, 65535]")
    return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass(frozen=True)
class CollectorConfig:
    """Everything the collector needs; :meth:`validate` names a bad field."""

    prometheus_url: str = "http://127.0.0.1:9090"
    """Prometheus' HTTP API base URL."""
    triton_url: str = "http://127.0.0.1:8000"
    """Triton's HTTP endpoint (the Service in front of the pods) for the model config."""
    namespace: str = "default"
    deployment: str = "mobilenetv4-triton"
    model: str = "mobilenetv4"
    """Triton model name: selects the ``model`` label and the model-config URL."""
    period_s: float = field(default=5.0, metadata=bounds(0.2, 3600.0, "seconds"))
    """One state per period: the control tick (DESIGN.md: default 5 s)."""
    stale_after_s: float = field(default=3 * SCRAPE_INTERVAL_S, metadata=bounds(0.1, 3600.0))
    """A sample older than this counts as missing: three scrape intervals, so one slow or
    failed scrape is tolerated and a dead target is not."""
    rate_window_s: float = field(default=30.0, metadata=bounds(1.0, 3600.0, "seconds"))
    """``rate()`` window: six 5-s scrapes, so a rate survives one missed scrape."""
    query_timeout_s: float = field(default=2.0, metadata=bounds(0.05, 60.0, "seconds"))
    """Per query (client and Prometheus' own ``timeout``) and for the Triton config GET."""
    query_workers: int = field(default=4, metadata=bounds(1, 32, "threads"))
    """Queries in flight at once (Prometheus answers each in milliseconds)."""
    history: int = field(default=120, metadata=bounds(1, 100_000, "states"))
    """States kept in memory (10 min at 5 s)."""
    min_replicas: int = field(default=1, metadata=bounds(0, 1000))
    """The actuator's envelope: fewest replicas (encoded as headroom down)."""
    max_replicas: int = field(default=4, metadata=bounds(1, 1000))
    """The actuator's envelope: most replicas (encoded as headroom up)."""
    slo_p95_s: float = field(default=0.15, metadata=bounds(0.001, 600.0, "seconds"))
    """The p95 latency target the run is judged against."""
    time_scale: float = field(default=1.0, metadata=bounds(0.01, 100.0))
    """The data plane's service times are this many times the box's (the testbed emulator's
    ``--time-scale``): rates are reported ×, latencies ÷ this, in the box's units the policy
    was trained in. 1 on a real box."""
    gpu_resource: str = "nvidia.com/gpu"
    """Extended resource of a GPU slot (kube-state-metrics writes it as nvidia_com_gpu)."""
    gpu_node_label: str = "Hostname"
    """The dcgm-exporter label holding the node name."""
    grpc_listen: str | None = "127.0.0.1:50052"
    """StateService address; None disables gRPC."""
    http_listen: str | None = "127.0.0.1:9102"
    """``/state``, ``/metrics``, ``/healthz`` address; None disables HTTP."""
    log_level: LogLevel = "info"

    def validate(self) -> None:
        """Names, URLs and addresses parse; min ≤ max replicas."""
        for name in ("prometheus_url", "triton_url"):
            url = urlparse(getattr(self, name))
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not an http(s):// URL")
        for name in ("namespace", "deployment"):
            if not DNS_LABEL.match(getattr(self, name)):
                raise ValueError(f"{name}: {getattr(self, name)!r} is not a DNS label")
        if not MODEL_NAME.match(self.model):
            raise ValueError(f"model: {self.model!r} has characters outside [A-Za-z0-9_.-]")
        if not re.match(r"^[a-z0-9.-]+(/[a-z0-9._-]+)?$", self.gpu_resource):
            raise ValueError(f"gpu_resource: {self.gpu_resource!r} is not a resource name")
        if not LABEL_NAME.match(self.gpu_node_label):
            raise ValueError(f"gpu_node_label: {self.gpu_node_label!r} is not a label name")
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas: must be <= max_replicas")
        for name in ("grpc_listen", "http_listen"):
            value = getattr(self, name)
            if value is not None:
                try:
                    parse_hostport(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None


FLAGS = {
    "prometheus_url": "--prometheus",
    "triton_url": "--triton-url",
    "namespace": "--namespace",
    "deployment": "--deployment",
    "model": "--model",
    "period_s": "--period",
    "stale_after_s": "--stale-after",
    "rate_window_s": "--rate-window",
    "query_timeout_s": "--query-timeout",
    "query_workers": "--query-workers",
    "history": "--history",
    "min_replicas": "--min-replicas",
    "max_replicas": "--max-replicas",
    "slo_p95_s": "--slo-p95",
    "time_scale": "--time-scale",
    "gpu_resource": "--gpu-resource",
    "gpu_node_label": "--gpu-node-label",
    "grpc_listen": "--grpc-listen",
    "http_listen": "--http-listen",
    "log_level": "--log-level",
}
"""Config field → command-line flag (errors name the flag the user typed)."""
