"""The testbed's monitoring stack: a real Prometheus and a real kube-state-metrics.

The controller and the experiments read the same PromQL series on the testbed as on the
reference MicroK8s box, so the monitoring is not emulated: Prometheus is Debian's package
(``deploy/testbed/install-debs.sh``), kube-state-metrics is built from the Go module proxy by
``deploy/testbed/build.sh``. Prometheus scrapes (``deploy/testbed/prometheus.yml``):

- ``triton`` / ``dcgm``: the data-plane emulator's per-pod Triton and per-node DCGM metrics,
  found through file_sd JSON files in :func:`sd_dir` (the emulator rewrites them, see
  :func:`write_sd`);
- ``kube-state-metrics``: object state (Deployments, HPAs, Pods, Nodes);
- ``kubelet-resource``: kwok's emulated kubelet resource metrics, the source metrics-server
  and hence the HPA read, one target per Node from kwok's own ``/discovery/prometheus``
  (Debian builds Prometheus without ``kubernetes_sd``);
- ``prometheus``: itself.

Both processes bind 127.0.0.1 only and run under :mod:`ecrl.testbed.procs`, so
``python -m ecrl.testbed.cluster down`` stops them with the cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ecrl.filesd import write_sd
from ecrl.testbed import cluster, procs

log = logging.getLogger("ecrl.testbed.monitoring")

PROMETHEUS_BINARY = "/usr/bin/prometheus"
"""Debian's prometheus (2.42 on bookworm), installed by ``deploy/testbed/install-debs.sh``."""
TEMPLATE = cluster.TESTBED_DIR / "prometheus.yml"
PROMETHEUS = "prometheus"
KSM = "kube-state-metrics"
HOST = "127.0.0.1"
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


class MonitoringError(RuntimeError):
    """Prometheus or kube-state-metrics failed, or a query did not succeed; says which and why."""


@dataclass(frozen=True)
class Monitoring:
    """A running monitoring stack of one testbed cluster."""

    prom_url: str
    ksm_url: str
    sd_dir: Path
    prometheus: procs.Proc
    ksm: procs.Proc


def sd_dir(cluster_name: str) -> Path:
    """Folder of the file_sd JSON files (``triton.json``, ``dcgm.json``) of one cluster."""
    return procs.run_dir(cluster_name) / "sd"


def prometheus_binary() -> str | None:
    """Path of the prometheus binary, or None when it is not installed."""
    return shutil.which("prometheus") or (
        PROMETHEUS_BINARY if Path(PROMETHEUS_BINARY).exists() else None
    )


def render_config(values: dict[str, str], template: Path = TEMPLATE) -> str:
    """Fill the ``${NAME}`` placeholders of the Prometheus template (no envsubst dependency).

    Every placeholder must have a value: a forgotten one would leave a config that Prometheus
    loads but that scrapes nothing.
    """
    text = template.read_text()
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise MonitoringError(f"no value for placeholder(s) {missing} in {template}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def start_kube_state_metrics(
    tb: cluster.Testbed, port: int = 8080, telemetry_port: int = 8081, timeout_s: float = 60.0
) -> procs.Proc:
    """Start kube-state-metrics against the testbed's apiserver and wait for ``/healthz``."""
    binary = tb.bin_dir / KSM
    if not binary.exists():
        raise MonitoringError(f"{binary} missing: build it with `make testbed-build`")
    proc = procs.start(
        tb.name,
        KSM,
        [
            str(binary),
            f"--kubeconfig={tb.kubeconfig}",
            f"--host={HOST}",
            f"--port={port}",
            f"--telemetry-host={HOST}",
            f"--telemetry-port={telemetry_port}",
        ],
    )
    _wait(proc, f"http://{HOST}:{port}/healthz", timeout_s)
    log.info("started", extra={"component": KSM, "pid": proc.pid, "port": port})
    return proc


def start_prometheus(
    tb: cluster.Testbed,
    port: int = 9090,
    ksm_port: int = 8080,
    sd: Path | None = None,
    timeout_s: float = 60.0,
) -> procs.Proc:
    """Start Prometheus with the rendered testbed config, fresh storage; waits for ``/-/ready``."""
    return start_prometheus_config(
        tb.name,
        {
            "SD_DIR": str(sd or sd_dir(tb.name)),
            "KSM_ADDRESS": f"{HOST}:{ksm_port}",
            "KWOK_ADDRESS": kwok_controller_address(tb),
            "PROM_ADDRESS": f"{HOST}:{port}",
        },
        port=port,
        timeout_s=timeout_s,
    )


def kwok_controller_address(tb: cluster.Testbed) -> str:
    """``host:port`` of the kwok controller, which serves the emulated kubelets' endpoints.

    kwokctl picks a free port when it creates the cluster and records it in the cluster's
    ``kwok.yaml`` (``options.kwokControllerPort``); it also writes it into every Node's
    ``status.daemonEndpoints``, which is where metrics-server looks.
    """
    import yaml

    path = tb.workdir / "clusters" / tb.name / "kwok.yaml"
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise MonitoringError(f"cannot read kwokctl's cluster config {path}: {exc}") from exc
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "KwokctlConfiguration":
            port = doc.get("options", {}).get("kwokControllerPort")
            if port:
                return f"{HOST}:{port}"
    raise MonitoringError(f"no options.kwokControllerPort in {path}")


def start_prometheus_config(
    cluster_name: str, values: dict[str, str], port: int, timeout_s: float = 60.0
) -> procs.Proc:
    """Start Prometheus with the template filled from ``values`` (tests run it without a cluster).

    Wipes the TSDB first: series left from an earlier run would satisfy queries that this run
    must answer itself.
    """
    binary = prometheus_binary()
    if binary is None:
        raise MonitoringError("prometheus missing: install the Debian package (make testbed)")
    run = procs.run_dir(cluster_name)
    run.mkdir(parents=True, exist_ok=True)
    sd = Path(values["SD_DIR"])
    for job in ("triton", "dcgm"):
        if not (sd / f"{job}.json").exists():
            write_sd(sd, job, [])  # an empty job rather than a "file not found" error every 2 s
    config = run / "prometheus.yml"
    config.write_text(render_config(values))
    data = run / "prometheus-data"
    procs.stop(cluster_name, PROMETHEUS)  # a running one must not have its TSDB pulled away
    shutil.rmtree(data, ignore_errors=True)
    proc = procs.start(
        cluster_name,
        PROMETHEUS,
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address={HOST}:{port}",
            "--web.enable-lifecycle",
        ],
    )
    _wait(proc, f"http://{HOST}:{port}/-/ready", timeout_s)
    log.info("started", extra={"component": PROMETHEUS, "pid": proc.pid, "port": port})
    return proc


def _wait(proc: procs.Proc, url: str, timeout_s: float) -> None:
    try:
        procs.wait_http(proc, url, timeout_s)
    except procs.ProcessError as exc:
        raise MonitoringError(str(exc)) from exc


def query(prom_url: str, promql: str, timeout_s: float = 10.0) -> list[dict]:
    """Instant query; returns ``data.result`` (``[{"metric": {...}, "value": [ts, "v"]}]``).

    Raises :class:`MonitoringError` with Prometheus' own ``errorType: error`` when the query
    fails (a PromQL syntax error answers HTTP 400 with a JSON body that says where).
    """
    url = f"{prom_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            raise MonitoringError(f"query {promql!r}: HTTP {exc.code}") from exc
        finally:
            exc.close()
    except (urllib.error.URLError, OSError) as exc:
        raise MonitoringError(
            f"query {promql!r}: Prometheus at {prom_url} unreachable: {exc}"
        ) from exc
    if body.get("status") != "success":
        raise MonitoringError(
            f"query {promql!r}: {body.get('errorType', 'error')}: {body.get('error', body)}"
        )
    return body["data"]["result"]


def targets(prom_url: str) -> list[dict]:
    """Active scrape targets with their health and last error (for diagnostics)."""
    url = f"{prom_url.rstrip('/')}/api/v1/targets?state=active"
    with urllib.request.urlopen(url, timeout=10.0) as resp:
        return json.loads(resp.read())["data"]["activeTargets"]


def wait_for_series(
    prom_url: str, promql: str, timeout_s: float = 60.0, poll_s: float = 0.5
) -> list[dict]:
    """Poll ``promql`` until it returns at least one series; on timeout the error lists targets.

    A missing series almost always means a target is down or undiscovered, so the error quotes
    every target's job, URL, health and last scrape error.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = query(prom_url, promql)
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    try:
        lines = [
            f"  {t['labels'].get('job')} {t['scrapeUrl']} {t['health']} {t.get('lastError', '')}"
            for t in targets(prom_url)
        ]
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        lines = [f"  (targets unavailable: {exc})"]
    raise MonitoringError(
        f"no series for {promql!r} within {timeout_s:.0f} s; targets:\n" + "\n".join(lines)
    )


def up(
    tb: cluster.Testbed,
    prom_port: int = 9090,
    ksm_port: int = 8080,
    ksm_telemetry_port: int = 8081,
) -> Monitoring:
    """Start kube-state-metrics, then Prometheus (so its first KSM scrape finds it up)."""
    ksm = start_kube_state_metrics(tb, ksm_port, ksm_telemetry_port)
    sd = sd_dir(tb.name)
    try:
        prom = start_prometheus(tb, prom_port, ksm_port, sd)
    except BaseException:
        procs.stop(tb.name, KSM)  # no half-started stack left behind
        raise
    return Monitoring(f"http://{HOST}:{prom_port}", f"http://{HOST}:{ksm_port}", sd, prom, ksm)


def down(cluster_name: str = cluster.DEFAULT_NAME) -> list[str]:
    """Stop Prometheus and kube-state-metrics of one cluster; returns the names that ran."""
    return [n for n in (PROMETHEUS, KSM) if procs.stop(cluster_name, n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ecrl.testbed.monitoring",
        description="Real Prometheus + kube-state-metrics for a running testbed, on 127.0.0.1.",
        epilog="examples:\n  python -m ecrl.testbed.monitoring up\n"
        "  python -m ecrl.testbed.monitoring up --prom-port 19090\n"
        "  python -m ecrl.testbed.monitoring down",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--name", default=cluster.DEFAULT_NAME, help="testbed cluster name")
    parser.add_argument("--prom-port", type=int, default=9090)
    parser.add_argument("--ksm-port", type=int, default=8080)
    parser.add_argument("--ksm-telemetry-port", type=int, default=8081)
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            tb = cluster.attach(args.name)
            mon = up(tb, args.prom_port, args.ksm_port, args.ksm_telemetry_port)
            print(f"prometheus: {mon.prom_url}")
            print(f"kube-state-metrics: {mon.ksm_url}/metrics")
            print(f"file_sd: {mon.sd_dir}")
        else:
            stopped = down(args.name)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    except (MonitoringError, cluster.TestbedError, procs.ProcessError) as exc:
        print(f"monitoring: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from ecrl import logs

    logs.setup("testbed-monitoring", os.environ.get("ECRL_LOG_LEVEL", "info"))
    raise SystemExit(main())
