"""ECRL's own services against a testbed: policy server, collector, scheduler extender, actuator.

The same four processes a user deploys (``python -m services.…``), each recorded by
:mod:`ecrl.testbed.procs` under the testbed's name so ``testbed down`` stops them too. The
extender listens where the testbed's kube-scheduler calls it (``DEFAULT_EXTENDER_URL``,
``ignorable``), the collector reads the testbed's Prometheus and Triton (the emulator), the
actuator reads the collector's HTTP state and asks the policy server. The ``rl`` mode of
``ecrl experiment --backend testbed`` and the fault tests start them through this module, so
what is measured is the product's wiring, not a test's.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ecrl.testbed import procs
from ecrl.testbed.cluster import DEFAULT_EXTENDER_URL, Testbed

REPO = Path(__file__).resolve().parents[2]
POLICY, COLLECTOR, EXTENDER, ACTUATOR = (
    "ecrl-policy-server",
    "ecrl-collector",
    "ecrl-extender",
    "ecrl-actuator",
)
NAMES = (POLICY, COLLECTOR, EXTENDER, ACTUATOR)
"""Process names under the testbed's run directory (logs: ``<run_dir>/<name>.log``)."""


@dataclass(frozen=True)
class ServicesConfig:
    """What the four services are told: the data plane, the Deployment, the envelope."""

    prom_url: str
    triton_http: str
    namespace: str = "default"
    deployment: str = "mobilenetv4-triton"
    slo_p95_s: float = 0.15
    """The box's SLO: the collector reports latencies in the box's time (``time_scale``)."""
    time_scale: float = 1.0
    """The emulator's ``--time-scale``: the collector converts rates and latencies back."""
    min_replicas: int = 1
    max_replicas: int = 4
    period_s: float = 5.0
    """The actuator's control period: the twin's tick, which the policy was trained on."""
    hold_ticks: int = 2
    policy_path: str | None = None
    """An ONNX policy; None = the packaged one."""
    lease_name: str = "ecrl-actuator"
    identity: str = "ecrl-testbed-actuator"
    """Constant across restarts, so a restarted actuator takes its own Lease back at once."""


@dataclass
class Services:
    """Start/stop the services one by one (fault tests kill and restart single ones)."""

    tb: Testbed
    cfg: ServicesConfig
    ports: dict[str, int] = field(default_factory=dict)
    extender_url: str = DEFAULT_EXTENDER_URL
    """Where the testbed's kube-scheduler calls the extender (its scheduler config)."""

    def __post_init__(self) -> None:
        for key in ("policy", "policy_metrics", "collector_http", "collector_grpc", "actuator"):
            self.ports.setdefault(key, procs.free_port())

    # ---------------------------------------------------------------- addresses
    @property
    def policy_target(self) -> str:
        return f"127.0.0.1:{self.ports['policy']}"

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['collector_http']}"

    @property
    def actuator_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['actuator']}/metrics"

    def log(self, name: str) -> Path:
        """The JSON-lines log of one service (the extender's request log, ...)."""
        return procs.run_dir(self.tb.name) / f"{name}.log"

    # ---------------------------------------------------------------- processes
    def _start(self, name: str, module: str, args: list[str], ready_url: str) -> procs.Proc:
        proc = procs.start(self.tb.name, name, [sys.executable, "-m", module, *args], cwd=REPO)
        procs.wait_http(proc, ready_url, timeout_s=60)
        return proc

    def start_policy_server(self) -> procs.Proc:
        args = [
            f"--listen={self.policy_target}",
            f"--metrics-listen=127.0.0.1:{self.ports['policy_metrics']}",
            "--reload-interval=0",
            "--log-level=info",
        ]
        if self.cfg.policy_path is not None:
            args.append(f"--policy={self.cfg.policy_path}")
        url = f"http://127.0.0.1:{self.ports['policy_metrics']}/metrics"
        return self._start(POLICY, "services.policy_server", args, url)

    def start_collector(self) -> procs.Proc:
        c = self.cfg
        args = [
            f"--prometheus={c.prom_url}",
            f"--triton-url={c.triton_http}",
            f"--namespace={c.namespace}",
            f"--deployment={c.deployment}",
            f"--period={min(c.period_s, 2.0):g}",
            f"--min-replicas={c.min_replicas}",
            f"--max-replicas={c.max_replicas}",
            f"--slo-p95={c.slo_p95_s:g}",
            f"--time-scale={c.time_scale:g}",
            f"--grpc-listen=127.0.0.1:{self.ports['collector_grpc']}",
            f"--http-listen=127.0.0.1:{self.ports['collector_http']}",
        ]
        return self._start(COLLECTOR, "services.collector", args, f"{self.collector_url}/healthz")

    def start_extender(self) -> procs.Proc:
        args = [
            f"--listen={self.extender_url.removeprefix('http://')}",
            f"--kubeconfig={self.tb.kubeconfig}",
            f"--policy-server={self.policy_target}",
            "--workers=1",
        ]
        return self._start(
            EXTENDER, "services.scheduler_extender", args, f"{self.extender_url}/readyz"
        )

    def start_actuator(self, audit_log: Path) -> procs.Proc:
        c = self.cfg
        audit_log.parent.mkdir(parents=True, exist_ok=True)
        args = [
            f"--kubeconfig={self.tb.kubeconfig}",
            f"--namespace={c.namespace}",
            f"--deployment={c.deployment}",
            f"--collector-url={self.collector_url}",
            f"--policy-server={self.policy_target}",
            f"--triton-url={c.triton_http}",
            f"--period={c.period_s:g}",
            f"--hold-ticks={c.hold_ticks}",
            f"--audit-log={audit_log}",
            f"--min-replicas={c.min_replicas}",
            f"--max-replicas={c.max_replicas}",
            f"--lease-name={c.lease_name}",
            f"--identity={c.identity}",
            f"--metrics-listen=127.0.0.1:{self.ports['actuator']}",
        ]
        return self._start(
            ACTUATOR, "services.scheduler_extender.actuator", args, self.actuator_metrics_url
        )

    def stop(self, name: str, grace_s: float = 10.0) -> bool:
        """SIGTERM (then SIGKILL) one service; True if it was running."""
        return procs.stop(self.tb.name, name, grace_s=grace_s)

    def kill(self, name: str) -> bool:
        """A crash, not a shutdown: SIGKILL, no drain, no Lease release."""
        return procs.stop(self.tb.name, name, sig=signal.SIGKILL)

    def stop_all(self) -> None:
        for name in reversed(NAMES):
            self.stop(name)
