"""The actuator on the testbed: real collector (Prometheus), real policy server, real apiserver.

Under load the actuator scales the Deployment through the ``scale`` subresource (the learned
policy's decision, or the HPA-equivalent fallback's), writes one audit line per tick and holds
the Lease. Killing the policy server mid-run turns the next tick into a fallback tick, with
replicas kept in [min, max] and no pod left Pending. The RBAC manifest grants exactly the
verbs the controller uses (``kubectl auth can-i`` as its ServiceAccount).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ecrl import serving
from ecrl.testbed import monitoring as mon
from ecrl.testbed import procs
from ecrl.testbed.cluster import Testbed
from ecrl.testbed.dataplane import DataPlane
from ecrl.testbed.faults import read_audit
from ecrl.testbed.procs import free_port, wait_until
from services.policy_server.config import ServerConfig
from services.policy_server.server import PolicyServer

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "deploy" / "rbac" / "ecrl-controller.yaml"
SA = "system:serviceaccount:default:ecrl-controller"
DEPLOYMENT = "mobilenetv4-triton"
SELECTOR = "app.kubernetes.io/name=mobilenetv4-triton"
LEASE = "ecrl-actuator-e2e"
IDENTITY = "actuator-e2e"
PERIOD_S = 2.0
MIN_REPLICAS, MAX_REPLICAS = 1, 4
AUDIT_FIELDS = {
    "time",
    "tick",
    "leader",
    "shadow",
    "outcome",
    "reason",
    "state",
    "observation",
    "raw_action",
    "clamped_action",
    "clamp_reasons",
    "fallback_reason",
    "ops",
}


@pytest.fixture
def heavy_load(dataplane: DataPlane) -> Iterator[dict]:
    """16 closed-loop tritonclient users (no think time): well past one pod's capacity.

    Any failure (no pod ready, a connection reset while a rolling update replaces the pods)
    is counted and retried after a short pause: the load must outlive what the actuator does.
    """
    import tritonclient.http as th

    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}

    def user() -> None:
        def connect() -> th.InferenceServerClient:
            url = dataplane.http_url.removeprefix("http://")
            return th.InferenceServerClient(url, connection_timeout=5.0, network_timeout=5.0)

        x = np.zeros((1, *serving.INPUT_SHAPE), np.float32)
        inp = th.InferInput(serving.INPUT_NAME, list(x.shape), serving.DATATYPE)
        inp.set_data_from_numpy(x)
        client = connect()
        while not stop.is_set():
            try:
                client.infer(serving.MODEL_NAME, [inp])
                counts["ok"] += 1
            except Exception:  # any client, socket or server error: count, reconnect, go on
                counts["failed"] += 1
                client.close()
                stop.wait(0.2)
                client = connect()
        client.close()

    threads = [threading.Thread(target=user, daemon=True) for _ in range(16)]
    try:
        yield {"counts": counts, "start": lambda: [t.start() for t in threads]}
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join(timeout=10)


@pytest.fixture
def collector_url(testbed: Testbed, monitoring: mon.Monitoring, dataplane: DataPlane):
    http_port = free_port()
    argv = [
        sys.executable,
        "-m",
        "services.collector",
        f"--prometheus={monitoring.prom_url}",
        f"--triton-url={dataplane.http_url}",
        "--namespace=default",
        f"--deployment={DEPLOYMENT}",
        "--period=2",
        f"--min-replicas={MIN_REPLICAS}",
        f"--max-replicas={MAX_REPLICAS}",
        "--slo-p95=0.15",
        f"--grpc-listen=127.0.0.1:{free_port()}",
        f"--http-listen=127.0.0.1:{http_port}",
    ]
    proc = procs.start(testbed.name, "actuator-collector", argv, cwd=REPO)
    url = f"http://127.0.0.1:{http_port}"
    try:
        procs.wait_http(proc, f"{url}/healthz", timeout_s=30)
        yield url
    finally:
        procs.stop(testbed.name, "actuator-collector")


@pytest.fixture
def policy_server() -> Iterator[PolicyServer]:
    """The real policy server (built-in ONNX policy) in-process, on a free port."""
    server = PolicyServer(
        ServerConfig(listen=f"127.0.0.1:{free_port()}", metrics_listen=None, reload_interval_s=0)
    )
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_s=0)


def start_actuator(tb: Testbed, collector: str, policy: str, triton: str, audit: Path):
    metrics_port = free_port()
    argv = [
        sys.executable,
        "-m",
        "services.scheduler_extender.actuator",
        f"--kubeconfig={tb.kubeconfig}",
        "--namespace=default",
        f"--deployment={DEPLOYMENT}",
        f"--collector-url={collector}",
        f"--policy-server={policy}",
        f"--triton-url={triton}",
        f"--period={PERIOD_S}",
        "--hold-ticks=2",
        f"--audit-log={audit}",
        f"--min-replicas={MIN_REPLICAS}",
        f"--max-replicas={MAX_REPLICAS}",
        f"--lease-name={LEASE}",
        f"--identity={IDENTITY}",
        f"--metrics-listen=127.0.0.1:{metrics_port}",
    ]
    proc = procs.start(tb.name, "actuator", argv, cwd=REPO)
    procs.wait_http(proc, f"http://127.0.0.1:{metrics_port}/metrics", timeout_s=30)
    return proc, f"http://127.0.0.1:{metrics_port}/metrics"


def deployment_doc(tb: Testbed) -> dict:
    out = tb.kubectl("get", "deployment", DEPLOYMENT, "-o", "json", "--show-managed-fields")
    return json.loads(out)


def pods_of(tb: Testbed) -> list[dict]:
    items = json.loads(tb.kubectl("get", "pods", "-l", SELECTOR, "-o", "json"))["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def unschedulable(pods: list[dict]) -> list[str]:
    return [
        p["metadata"]["name"]
        for p in pods
        for c in p["status"].get("conditions", [])
        if c["type"] == "PodScheduled" and c["status"] == "False"
    ]


def test_actuator_scales_audits_holds_the_lease_and_falls_back_when_the_policy_dies(
    testbed: Testbed,
    deployment,
    dataplane: DataPlane,
    monitoring: mon.Monitoring,
    collector_url: str,
    policy_server: PolicyServer,
    heavy_load: dict,
    tmp_path: Path,
) -> None:
    deployment(replicas=1)
    audit = tmp_path / "audit.jsonl"
    seen_replicas: list[int] = []

    def spec_replicas() -> int:
        n = deployment_doc(testbed)["spec"]["replicas"]
        seen_replicas.append(n)
        return n

    proc, metrics_url = start_actuator(
        testbed, collector_url, f"127.0.0.1:{policy_server.port}", dataplane.http_url, audit
    )
    try:
        heavy_load["start"]()
        # 1. under load, the actuator (policy or, if the policy holds, no change) acts; give
        #    the learned policy 90 s, then take it away so the HPA-equivalent rule must act.
        t0 = time.monotonic()
        scaled_before_kill = False
        while time.monotonic() - t0 < 90:
            if spec_replicas() > 1:
                scaled_before_kill = True
                break
            time.sleep(PERIOD_S)
        wait_until(
            "a policy-decided tick",
            lambda: any(x["outcome"] == "policy" for x in read_audit(audit)),
            60,
            1.0,
        )

        # 2. kill the policy server: the next tick falls back
        ticks_before = len(read_audit(audit))
        killed_at = time.time()
        policy_server.stop(grace_s=0)

        def first_tick_after_kill() -> dict | None:
            after = [x for x in read_audit(audit) if x["time_s"] > killed_at]
            return after[0] if after else None

        first = wait_until("a tick after the kill", first_tick_after_kill, 4 * PERIOD_S, 0.2)
        assert isinstance(first, dict)
        assert first["outcome"] == "fallback", first["reason"]
        assert first["fallback_reason"] == "policy_unavailable", first["reason"]
        fallback_delay_s = first["time_s"] - killed_at

        # 3. if the policy had not scaled, the fallback (HPA rule on CPU) must
        if not scaled_before_kill:
            wait_until("a scale-up by the fallback", lambda: spec_replicas() > 1, 180, PERIOD_S)
        lines = read_audit(audit)
        scale_ops = [
            (x["tick"], x["outcome"], op)
            for x in lines
            for op in x["ops"]
            if op["op"] == "replicas" and op["outcome"] == "ok"
        ]
        assert scale_ops, "no replicas op in the audit log"

        # no HPA exists (the fixture deletes it): spec.replicas is the actuator's last target,
        # set through the scale subresource (PATCH .../deployments/NAME/scale, per the audit)
        assert all("scale subresource" in op["detail"] for _, _, op in scale_ops)

        def replicas_is_last_target() -> bool:
            targets = [
                int(op["detail"].split("=")[1].split()[0])
                for x in read_audit(audit)
                for op in x["ops"]
                if op["op"] == "replicas" and op["outcome"] == "ok"
            ]
            return spec_replicas() == targets[-1] > 1

        wait_until("spec.replicas at the actuator's last target", replicas_is_last_target, 10, 1.0)
        managers = deployment_doc(testbed)["metadata"]["managedFields"]
        fields_by_manager = {  # printed only: scale writes leave no replicas owner here
            (m["manager"], m.get("subresource")): sorted(m["fieldsV1"].get("f:spec", {}))
            for m in managers
        }

        # 4. no Pending pods: every pod the actuator asked for is scheduled
        def all_scheduled() -> bool:
            pods = pods_of(testbed)
            return len(pods) == spec_replicas() and all(p["spec"].get("nodeName") for p in pods)

        wait_until("every pod scheduled", all_scheduled, 60, 1.0)
        assert unschedulable(pods_of(testbed)) == []
        assert all(MIN_REPLICAS <= n <= MAX_REPLICAS for n in seen_replicas), seen_replicas

        # 5. the Lease names the actuator
        lease = json.loads(testbed.kubectl("get", "lease", LEASE, "-o", "json"))
        assert lease["spec"]["holderIdentity"] == IDENTITY
        assert lease["spec"]["leaseDurationSeconds"] == 15

        # 6. one audit line per tick, every field there
        lines = read_audit(audit)
        assert [x["tick"] for x in lines] == list(range(1, len(lines) + 1))
        assert all(set(x) >= AUDIT_FIELDS for x in lines)
        acted = [x for x in lines if x["outcome"] in ("policy", "fallback")]
        assert acted and all(x["state"]["values"] and x["clamped_action"] for x in acted)
        with_metrics = procs.wait_http(proc, metrics_url, timeout_s=10).decode()
        assert 'ecrl_actuator_fallback_total{reason="policy_unavailable"}' in with_metrics
        assert "ecrl_actuator_leader 1.0" in with_metrics
        outcomes = {
            o: sum(x["outcome"] == o for x in lines) for o in ("policy", "fallback", "hold")
        }
        print(
            f"actuator: {len(lines)} ticks {outcomes}; scale ops {scale_ops}; replicas seen "
            f"{sorted(set(seen_replicas))}; scaled before the kill: {scaled_before_kill}; first tick "
            f"after the kill started {fallback_delay_s:.2f} s later (tick {first['tick']}, "
            f"{first['tick'] - ticks_before} tick(s) after), load {heavy_load['counts']}; "
            f"field managers {fields_by_manager}"
        )
    finally:
        procs.stop(testbed.name, "actuator")
        testbed.kubectl("delete", "lease", LEASE, "--ignore-not-found", check=False)


USED = [
    ("get", "deployments.apps", ""),
    ("patch", "deployments.apps", ""),
    ("get", "deployments.apps", "scale"),
    ("patch", "deployments.apps", "scale"),
    ("list", "pods", ""),
    ("watch", "pods", ""),
    ("patch", "pods", "resize"),
    ("get", "leases.coordination.k8s.io", ""),
    ("create", "leases.coordination.k8s.io", ""),
    ("update", "leases.coordination.k8s.io", ""),
    ("list", "nodes", ""),
    ("watch", "nodes", ""),
]
UNUSED = [
    ("delete", "deployments.apps", ""),
    ("update", "deployments.apps", ""),
    ("create", "pods", ""),
    ("delete", "pods", ""),
    ("patch", "pods", ""),
    ("create", "pods", "binding"),
    ("delete", "leases.coordination.k8s.io", ""),
    ("get", "secrets", ""),
    ("patch", "nodes", ""),
]


def test_rbac_manifest_grants_only_the_verbs_the_controller_uses(testbed: Testbed) -> None:
    testbed.kubectl("apply", "-f", str(RBAC))

    def can(verb: str, resource: str, sub: str) -> str:
        args = ["auth", "can-i", verb, resource, f"--as={SA}", "-n", "default"]
        if sub:
            args.append(f"--subresource={sub}")
        return testbed.kubectl(*args, check=False).strip()

    try:
        wrong_yes = [u for u in UNUSED if can(*u) != "no"]
        wrong_no = [u for u in USED if can(*u) != "yes"]
        assert not wrong_no, f"denied but used: {wrong_no}"
        assert not wrong_yes, f"granted but unused: {wrong_yes}"
    finally:
        testbed.kubectl("delete", "-f", str(RBAC), "--ignore-not-found", check=False)
