"""The comparison on the real box: the chart's modes switched by Helm, Locust against Triton.

For every run, in the interleaved order of :func:`~ecrl.experiment.testbed_backend.interleaved`:
**switch** the release to the mode (``helm upgrade --reuse-values --set mode=baseline|rl
--wait``: the HPA exists only in ``baseline``, the actuator and the second scheduler only in
``rl``), **reset** the Triton Deployment to one replica and its initial model config, **warm up**
(constant light load, not measured), **run** Locust along the shape and **collect** the same
per-second series as the testbed (Locust's per-request log; replicas, utilization and resources
from the cluster's Prometheus, DCGM from dcgm-exporter, batching from Triton's config API).

Prometheus and Triton are reached through ``kubectl port-forward`` unless URLs are given. Every
command can be printed instead of run (``dry_run``): the plan a person can read and run by hand.
Locust runs where this command runs (the box itself, as in the user's baseline); the chart's
in-cluster Locust Jobs are for loads one machine's client cannot generate.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ecrl.experiment.runner import ExperimentConfig, RunResult
from ecrl.experiment.testbed_backend import (
    DEPLOYMENT,
    TestbedEndpoints,
    check_modes,
    drive_run,
    frames,
    interleaved,
    load_baseline_config,
)
from ecrl.load.shapes import LoadShape
from ecrl.testbed.procs import free_port, wait_until

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "ecrl"
CHART_MODE = {"hpa-cpu": "baseline", "rl": "rl"}
"""Experiment mode → the chart's ``mode`` value."""
MICROK8S_MODES = tuple(CHART_MODE)


def default_tool(microk8s_sub: str, plain: str) -> tuple[str, ...]:
    """``microk8s kubectl`` / ``microk8s helm3`` on the box, else the plain binary."""
    return ("microk8s", microk8s_sub) if shutil.which("microk8s") else (plain,)


@dataclass(frozen=True)
class Microk8sTarget:
    """The cluster, the release and how to reach its Prometheus and Triton."""

    kubectl: tuple[str, ...] = ("microk8s", "kubectl")
    helm: tuple[str, ...] = ("microk8s", "helm3")
    chart: Path = CHART
    release: str = "ecrl"
    namespace: str = "ecrl"
    prometheus_service: str = "observability/kube-prom-stack-kube-prome-prometheus:9090"
    """``namespace/service:port`` of the observability addon's Prometheus."""
    triton_service: str = "mobilenetv4-triton"
    """The Triton Service in :attr:`namespace` (ports 8000 HTTP, 8001 gRPC)."""
    prom_url: str | None = None
    """Given: use it; None: ``kubectl port-forward`` the Prometheus service."""
    triton_url: str | None = None
    triton_grpc: str | None = None
    helm_set: tuple[str, ...] = ()
    """Extra ``--set`` values for every ``helm upgrade`` (``image.tag=…``)."""
    warmup_s: float = 30.0
    warmup_users: int = 2
    data_plane_time_scale: float = 1.0
    """1 on the box; the testbed's emulator runs service times ×4."""
    dcgm_selector: str = ""
    helm_timeout: str = "10m"


@dataclass
class Shell:
    """Runs commands, or prints them (``dry_run``) — every command goes through here."""

    dry_run: bool = False
    echo: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))

    def run(self, argv: Sequence[str], timeout_s: float = 900.0) -> str:
        self.echo("+ " + shlex.join(argv))
        if self.dry_run:
            return ""
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    def background(self, argv: Sequence[str]) -> subprocess.Popen[bytes] | None:
        self.echo("+ " + shlex.join(argv) + " &")
        if self.dry_run:
            return None
        return subprocess.Popen(
            list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )


def _listening(port: int) -> bool:
    """Something accepts on the loopback ``port``: a port-forward is up once it does."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class PortForwards:
    """``kubectl port-forward`` for Prometheus and Triton unless their URLs were given."""

    def __init__(self, target: Microk8sTarget, shell: Shell) -> None:
        self.target, self.shell = target, shell
        self.procs: list[subprocess.Popen[bytes]] = []

    def _forward(self, namespace: str, service: str, ports: list[tuple[int, int]]) -> None:
        spec = [f"{local}:{remote}" for local, remote in ports]
        argv = [*self.target.kubectl, "port-forward", "-n", namespace, f"svc/{service}", *spec]
        proc = self.shell.background(argv)
        if proc is None:
            return
        self.procs.append(proc)
        for local, _ in ports:
            wait_until(
                f"port-forward to {namespace}/{service} listening",
                lambda port=local: _listening(port),
                30,
            )

    def endpoints(self) -> TestbedEndpoints:
        t = self.target
        prom, triton, grpc_url = t.prom_url, t.triton_url, t.triton_grpc
        if prom is None:
            ns, rest = t.prometheus_service.split("/", 1)
            svc, port = rest.rsplit(":", 1)
            local = free_port()
            self._forward(ns, svc, [(local, int(port))])
            prom = f"http://127.0.0.1:{local}"
        if triton is None:
            http, grpc_port, metrics = free_port(), free_port(), free_port()
            self._forward(
                t.namespace, t.triton_service, [(http, 8000), (grpc_port, 8001), (metrics, 8002)]
            )
            triton, grpc_url = f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc_port}"
        return TestbedEndpoints(
            prom_url=prom,
            triton_http=triton,
            triton_grpc=grpc_url or "",
            namespace=t.namespace,
            emulator_time_scale=t.data_plane_time_scale,
            dcgm_selector=t.dcgm_selector,
        )

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


# ------------------------------------------------------------------------ one run
def switch_mode(target: Microk8sTarget, shell: Shell, mode: str) -> None:
    """``helm upgrade`` the release to the chart's mode for ``mode`` and wait for it."""
    argv = [
        *target.helm,
        "upgrade",
        "--install",
        target.release,
        str(target.chart),
        "-n",
        target.namespace,
        "--create-namespace",
        "--reuse-values",
        "--set",
        f"mode={CHART_MODE[mode]}",
        "--wait",
        "--timeout",
        target.helm_timeout,
    ]
    for value in target.helm_set:
        argv += ["--set", value]
    shell.run(argv)


def reset(target: Microk8sTarget, shell: Shell, ep: TestbedEndpoints) -> None:
    """One replica, rolled out, with the Deployment's initial Triton config."""
    k = [*target.kubectl, "-n", target.namespace]
    shell.run([*k, "scale", f"deployment/{DEPLOYMENT}", "--replicas=1"])
    shell.run([*k, "rollout", "status", f"deployment/{DEPLOYMENT}", "--timeout=10m"])
    if not shell.dry_run:
        load_baseline_config(ep)
    else:
        shell.echo(
            f"+ POST {ep.triton_http}/v2/repository/models/mobilenetv4/load (initial config)"
        )


def warm_up(target: Microk8sTarget, shell: Shell, ep: TestbedEndpoints, prefix: Path) -> None:
    """Constant light load, not measured: connections, CUDA context and caches warm."""
    from ecrl.load.locust_run import locust_command, run_locust

    if target.warmup_s <= 0:
        return
    if shell.dry_run:
        cmd = locust_command(
            ep.triton_http, prefix, users=target.warmup_users, run_time_s=target.warmup_s
        )
        shell.echo("+ " + shlex.join(cmd))
        return
    run_locust(
        ep.triton_http,
        None,
        prefix,
        grpc_url=ep.triton_grpc or None,
        users=target.warmup_users,
        run_time_s=target.warmup_s,
    )


def run_one_microk8s(
    mode: str,
    shape: LoadShape,
    target: Microk8sTarget,
    shell: Shell,
    ep: TestbedEndpoints,
    out_dir: Path,
    slo_p95_s: float,
    seed: int,
    repeat: int,
) -> RunResult | None:
    """Switch, reset, warm up, run, collect; None in a dry run (nothing was measured)."""
    switch_mode(target, shell, mode)
    reset(target, shell, ep)
    warm_up(target, shell, ep, out_dir / f"warmup-{shape.name}-{mode}-{repeat}")
    if shell.dry_run:
        shell.echo(
            f"+ locust along {shape.name} ({shape.duration_s:g} s) → "
            f"{out_dir}/{shape.name}-{mode}-{repeat}_requests.csv; Prometheus range queries"
        )
        return None
    return drive_run(mode, shape, ep, out_dir, slo_p95_s, seed, repeat)


def run_experiment_microk8s(
    cfg: ExperimentConfig,
    shapes: list[LoadShape],
    target: Microk8sTarget,
    out_dir: Path,
    slo_p95_s: float,
    shell: Shell | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Every (shape, repeat, mode) on the box; (kpis, series), or None in a dry run."""
    check_modes(cfg.modes, MICROK8S_MODES, "microk8s")
    shell = shell or Shell()
    raw = out_dir / "locust"
    if not shell.dry_run:
        raw.mkdir(parents=True, exist_ok=True)
    tasks = interleaved(cfg, shapes)
    forwards = PortForwards(target, shell)
    results: list[RunResult] = []
    bar = tqdm(
        total=round(sum(t[1].duration_s + target.warmup_s for t in tasks)),
        desc="microk8s runs",
        unit="s",
        disable=not progress or shell.dry_run,
    )
    try:
        ep = forwards.endpoints()
        for mode, shape, seed, rep in tasks:
            bar.set_postfix_str(f"{shape.name}/{mode}/{rep}")
            res = run_one_microk8s(mode, shape, target, shell, ep, raw, slo_p95_s, seed, rep)
            if res is not None:
                results.append(res)
            bar.update(round(shape.duration_s + target.warmup_s))
    finally:
        bar.close()
        forwards.close()
    if shell.dry_run:
        return None
    return frames(results)
