"""The Helm chart (deploy/helm/ecrl) against the testbed's real control plane.

Helm is built from the Go module proxy by ``deploy/tools/install-helm.sh`` and the Prometheus
Operator's real ServiceMonitor CRD comes from its Go module (``deploy/testbed/crds/fetch-crds.sh``);
both are cached, so a warm run only reads files. Three things are proved:

1. every object the chart renders, in both modes (and with the optional load test and /bind),
   passes the real kube-apiserver's server-side dry run (strict field validation, CRD schemas);
2. the rendered KubeSchedulerConfiguration is loaded by the real kube-scheduler 1.33 binary,
   which takes its own Lease and binds a pod that asks for schedulerName ecrl-scheduler (the
   extender is not reachable from here: ``ignorable: true`` lets the pod through, as on the box
   when the extender is down);
3. ``helm install`` (baseline) → Deployments available on kwok's GPU node → ``helm upgrade
   --set mode=rl`` swaps the HPA for the actuator and the second scheduler, whose installed
   config schedules the new Triton pod → ``helm uninstall`` leaves nothing labelled with the
   release behind.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import yaml

from ecrl.testbed import procs
from ecrl.testbed.cluster import Testbed

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "ecrl"
NAMESPACE = "ecrl-chart-e2e"
RELEASE = "ecrl"
OTHER_NAMESPACES = ("gpu-operator-resources", "observability")
"""Where the chart puts the time-slicing ConfigMap (GPU operator) and the Grafana dashboard."""
TESTBED_VALUES = ("--set", "model.persistence.enabled=false")
"""The testbed has no storage provisioner: the model repository becomes an emptyDir."""
SCHEDULER_NAME = "ecrl-scheduler"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
NAMESPACED_KINDS = (
    "deployments,replicasets,pods,services,serviceaccounts,configmaps,secrets,roles,"
    "rolebindings,horizontalpodautoscalers,persistentvolumeclaims,jobs,servicemonitors"
)


wait_until = partial(procs.wait_until, every_s=0.3)
"""The testbed's bounded poll (60 s unless told), at this module's pace."""


@dataclass(frozen=True)
class Helm:
    """The cached helm binary with its own config/cache dirs, pointed at the testbed."""

    binary: Path
    home: Path
    kubeconfig: Path

    def __call__(self, *args: str, check: bool = True) -> str:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        proc = subprocess.run(
            [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr.strip()}")
        return proc.stdout

    def template(self, *values: str) -> list[dict]:
        out = self(
            "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *TESTBED_VALUES, *values
        )
        return [doc for doc in yaml.safe_load_all(out) if doc]


def _script(path: str) -> Path:
    proc = subprocess.run(
        ["bash", str(REPO / path)],
        capture_output=True,
        text=True,
        timeout=900,  # a cold helm build is ~3 min on two cores
        check=False,
        env={**os.environ},
    )
    assert proc.returncode == 0, f"{path} failed:\n{proc.stderr[-2000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster(testbed: Testbed) -> Iterator[Testbed]:
    """The session testbed with the ServiceMonitor CRD and the chart's namespaces."""
    crd = _script("deploy/testbed/crds/fetch-crds.sh")
    testbed.kubectl("apply", "--server-side", "-f", str(crd))
    testbed.kubectl(
        "wait",
        "--for=condition=established",
        "--timeout=30s",
        "crd/servicemonitors.monitoring.coreos.com",
    )
    created = [
        ns
        for ns in (NAMESPACE, *OTHER_NAMESPACES)
        if not testbed.kubectl("get", "namespace", ns, "-o", "name", check=False)
    ]
    for ns in created:
        testbed.kubectl("create", "namespace", ns)
    try:
        yield testbed
    finally:
        for ns in created:
            testbed.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def helm(cluster: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(
        _script("deploy/tools/install-helm.sh"),
        tmp_path_factory.mktemp("helm"),
        cluster.kubeconfig,
    )


def _kinds(docs: list[dict]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


@pytest.mark.parametrize("mode", ["baseline", "rl"])
def test_rendered_chart_passes_server_side_dry_run(cluster: Testbed, helm: Helm, mode: str):
    docs = helm.template(
        "--set", f"mode={mode}", "--set", "loadtest.enabled=true", "--set", "extender.bind=true"
    )
    kinds = _kinds(docs)
    assert (("HorizontalPodAutoscaler", "mobilenetv4-triton") in kinds) == (mode == "baseline")
    assert (("Deployment", "ecrl-actuator") in kinds) == (mode == "rl")
    assert (("Deployment", "ecrl-scheduler") in kinds) == (mode == "rl")
    assert {("Job", "ecrl-loadtest-master"), ("Job", "ecrl-loadtest-worker")} <= kinds
    assert sum(d["kind"] == "ServiceMonitor" for d in docs) == (6 if mode == "rl" else 5)

    out = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input_text=yaml.safe_dump_all(docs),
    )
    accepted = [line for line in out.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(docs), out


def _scheduler_config(docs: list[dict]) -> dict:
    (cm,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ecrl-scheduler"
    ]
    return yaml.safe_load(cm["data"]["scheduler-config.yaml"])


def _start_scheduler(tb: Testbed, config: dict, workdir: Path) -> tuple[procs.Proc, int]:
    """The testbed's kube-scheduler binary with ``config``; only the connection is swapped
    (in the cluster it is the pod's in-cluster credentials, here the testbed kubeconfig)."""
    config = {**config, "clientConnection": {"kubeconfig": str(tb.kubeconfig)}}
    path = workdir / "scheduler-config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = procs.free_port()
    proc = procs.start(
        tb.name,
        "chart-kube-scheduler",
        [
            str(tb.bin_dir / "kube-scheduler"),
            f"--config={path}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--v=2",
        ],
    )
    return proc, port


def _still_running(proc: procs.Proc) -> bool:
    """True while ``proc`` runs; an exit fails the test at once, quoting its log."""
    if not proc.alive():
        pytest.fail(f"{proc.name} exited:\n{proc.log_tail()}")
    return True


def _healthz(port: int) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the scheduler's self-signed serving certificate
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _pod(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "schedulerName": SCHEDULER_NAME,
                "containers": [
                    {
                        "name": "triton",
                        "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
                        "resources": {"limits": {"nvidia.com/gpu": "1", "cpu": "1"}},
                    }
                ],
            },
        }
    )


def _get(tb: Testbed, *args: str) -> dict:
    out = tb.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out) if out else {}


def test_kube_scheduler_loads_the_rendered_config_and_schedules_for_its_profile(
    cluster: Testbed, helm: Helm, tmp_path: Path
):
    config = _scheduler_config(helm.template("--set", "mode=rl"))
    assert config["profiles"] == [{"schedulerName": SCHEDULER_NAME}]
    (ext,) = config["extenders"]
    assert ext["urlPrefix"] == f"http://ecrl-extender.{NAMESPACE}.svc:8888"
    assert ext["nodeCacheCapable"] is True and ext["ignorable"] is True
    assert ext["managedResources"][0]["name"] == "nvidia.com/gpu"
    lease = config["leaderElection"]["resourceName"]

    proc, port = _start_scheduler(cluster, config, tmp_path)
    try:
        wait_until("kube-scheduler /healthz", lambda: _still_running(proc) and _healthz(port), 30)
        log = wait_until(
            "the scheduler to take its Lease",
            lambda: (
                f"successfully acquired lease {NAMESPACE}/{lease}" in proc.log_tail(10**6)
                and proc.log_tail(10**6)
            ),
        )
        assert f"schedulerName: {SCHEDULER_NAME}" in log  # the "Using component config" dump
        assert '"Creating extender"' in log and ext["urlPrefix"] in log

        cluster.kubectl("apply", "-f", "-", input_text=_pod("chart-sched"))
        pod = wait_until(
            "the pod to be bound by ecrl-scheduler",
            lambda: (
                (p := _get(cluster, "pod", "chart-sched", "-n", NAMESPACE))
                and p["spec"].get("nodeName")
                and p
            ),
        )
        assert pod["spec"]["nodeName"] == "box"
        assert proc.alive(), proc.log_tail()
    finally:
        procs.stop(cluster.name, "chart-kube-scheduler")
        cluster.kubectl(
            "delete", "pod", "chart-sched", "-n", NAMESPACE, "--wait=false", check=False
        )
        cluster.kubectl("delete", "lease", lease, "-n", NAMESPACE, check=False)


def _available(tb: Testbed, name: str) -> bool:
    dep = _get(tb, "deployment", name, "-n", NAMESPACE)
    status = dep.get("status", {})
    return bool(dep) and status.get("availableReplicas", 0) >= 1


def _leftovers(tb: Testbed) -> list[str]:
    names = tb.kubectl("get", NAMESPACED_KINDS, "-A", "-l", INSTANCE, "-o", "name").split()
    names += tb.kubectl(
        "get", "clusterroles,clusterrolebindings", "-l", INSTANCE, "-o", "name"
    ).split()
    names += tb.kubectl(
        "get", "secrets", "-n", NAMESPACE, "-l", f"owner=helm,name={RELEASE}", "-o", "name"
    ).split()
    return names


def test_install_baseline_upgrade_to_rl_and_uninstall_leaves_nothing(
    cluster: Testbed, helm: Helm, tmp_path: Path
):
    services = ("ecrl-policy-server", "ecrl-collector", "ecrl-extender", "mobilenetv4-triton")
    assert not _leftovers(cluster), "objects of an earlier release are still there"
    lease = "ecrl-scheduler"
    try:
        helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, *TESTBED_VALUES)
        for name in services:
            wait_until(f"{name} available", lambda n=name: _available(cluster, n))
        hpa = _get(cluster, "hpa", "mobilenetv4-triton", "-n", NAMESPACE)
        assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 80
        assert not _get(cluster, "deployment", "ecrl-actuator", "-n", NAMESPACE)
        triton = _get(cluster, "deployment", "mobilenetv4-triton", "-n", NAMESPACE)
        assert triton["spec"]["template"]["spec"]["schedulerName"] == "default-scheduler"

        helm(
            "upgrade",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "mode=rl",
        )
        assert not _get(cluster, "hpa", "mobilenetv4-triton", "-n", NAMESPACE)
        for name in ("ecrl-actuator", "ecrl-scheduler", *services[:3]):
            wait_until(f"{name} available", lambda n=name: _available(cluster, n))
        triton = _get(cluster, "deployment", "mobilenetv4-triton", "-n", NAMESPACE)
        assert triton["spec"]["template"]["spec"]["schedulerName"] == SCHEDULER_NAME
        role = _get(cluster, "role", "ecrl-actuator", "-n", NAMESPACE)
        assert {"deployments/scale", "pods/resize", "leases"} <= {
            res for rule in role["rules"] for res in rule["resources"]
        }

        # Kwok runs no containers, so stand in for the ecrl-scheduler pod: the real binary with
        # the installed ConfigMap schedules the rl-mode Triton pod that nobody else will.
        cm = _get(cluster, "configmap", "ecrl-scheduler", "-n", NAMESPACE)
        config = yaml.safe_load(cm["data"]["scheduler-config.yaml"])
        proc, _ = _start_scheduler(cluster, config, tmp_path)
        try:
            wait_until(
                "the rl-mode Triton pod to be bound by ecrl-scheduler",
                lambda: _still_running(proc) and _rl_triton_pod_bound(cluster),
            )
        finally:
            procs.stop(cluster.name, "chart-kube-scheduler")

        helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "60s")
        _wait_gone(cluster)
    finally:
        helm("uninstall", RELEASE, "--namespace", NAMESPACE, check=False)
        cluster.kubectl("delete", "lease", lease, "-n", NAMESPACE, check=False)
    assert not _leftovers(cluster)


def _wait_gone(tb: Testbed, timeout_s: float = 60.0) -> None:
    """Poll until no object labelled with the release (and no release record) is left."""
    deadline = time.monotonic() + timeout_s
    while left := _leftovers(tb):
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind after helm uninstall: {left}")
        time.sleep(0.5)


def _rl_triton_pod_bound(tb: Testbed) -> bool:
    pods = _get(tb, "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=triton")
    return any(
        p["spec"].get("schedulerName") == SCHEDULER_NAME and p["spec"].get("nodeName") == "box"
        for p in pods.get("items", [])
    )


def test_the_mode_comparison_runs_on_the_installed_chart(
    cluster: Testbed, helm: Helm, monitoring, tmp_path: Path
) -> None:
    """``ecrl experiment --backend microk8s`` end to end against the chart on the testbed:
    helm switches baseline ↔ rl, Locust drives the emulated Triton pods of the release, the
    KPIs come from Locust's log and the testbed's Prometheus. Kwok runs no containers, so the
    in-cluster services do not act here (that is ``--backend testbed``); the ecrl-scheduler
    pod's part is played by the real kube-scheduler with the chart's config, and a second
    emulator (own file_sd folder) serves the release's Triton pods."""
    from ecrl.experiment.microk8s_backend import Microk8sTarget, Shell, run_experiment_microk8s
    from ecrl.experiment.runner import ExperimentConfig
    from ecrl.load.shapes import LoadShape
    from ecrl.testbed.dataplane import start_emulator

    plane = start_emulator(
        cluster,
        http_port=procs.free_port(),
        grpc_port=procs.free_port(),
        metrics_port=procs.free_port(),
        namespace=NAMESPACE,
        selector=f"app.kubernetes.io/component=triton,{INSTANCE}",
        usage_interval_s=2.0,
        name="emulator-chart",
        sd=tmp_path / "sd",
    )
    kubeconfig = ("--kubeconfig", str(cluster.kubeconfig))
    target = Microk8sTarget(
        kubectl=(str(cluster.bin_dir / "kubectl"), *kubeconfig),
        helm=(str(helm.binary), *kubeconfig),
        release=RELEASE,
        namespace=NAMESPACE,
        prom_url=monitoring.prom_url,
        triton_url=plane.http_url,
        triton_grpc=plane.grpc_url,
        helm_set=TESTBED_VALUES[1:],
        warmup_s=5,
        data_plane_time_scale=plane.time_scale,
        dcgm_selector='emulated="true"',
        helm_timeout="2m",
    )
    cfg = ExperimentConfig(modes=("hpa-cpu", "rl"), shapes=("mk8s",), repeats=1)
    shape = LoadShape("mk8s", ((0, 4), (25, 4)))
    scheduler, _ = _start_scheduler(
        cluster, _scheduler_config(helm.template("--set", "mode=rl")), tmp_path
    )
    lines: list[str] = []
    try:
        kpis, series = run_experiment_microk8s(
            cfg, [shape], target, tmp_path / "out", 0.15, Shell(echo=lines.append), False
        )
        assert _still_running(scheduler)
        values = yaml.safe_load(helm("get", "values", RELEASE, "-n", NAMESPACE, "-o", "yaml"))
        hpa_after = _get(cluster, "hpa", "mobilenetv4-triton", "-n", NAMESPACE)
    finally:
        helm("uninstall", RELEASE, "--namespace", NAMESPACE, check=False)
        procs.stop(cluster.name, "chart-kube-scheduler")
        procs.stop(cluster.name, "emulator-chart")
        cluster.kubectl("delete", "lease", SCHEDULER_NAME, "-n", NAMESPACE, check=False)
    switches = [x.split("--set mode=")[1].split()[0] for x in lines if " upgrade --install " in x]
    assert switches == ["baseline", "rl"]
    assert values["mode"] == "rl" and not hpa_after  # rl last: the HPA went with the switch
    assert sorted(kpis["mode"]) == ["hpa-cpu", "rl"]
    assert (kpis["throughput_rps"] > 1).all() and (kpis["success_ratio"] > 0.95).all()
    for mode in ("hpa-cpu", "rl"):  # replicas of the release's Deployment, from kube-state-metrics
        assert series[series["mode"] == mode]["replicas_ready"].notna().mean() > 0.5
    print(f"\n{kpis[['mode', 'throughput_rps', 'latency_p95_s', 'replicas_mean']]}")
