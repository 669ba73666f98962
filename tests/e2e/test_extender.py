"""Our scheduler extender behind the real kube-scheduler (after Kubernetes' extender tests).

The session testbed's scheduler calls http://127.0.0.1:8888 (``ignorable: true``,
``nodeCacheCapable: true``, managed resource ``nvidia.com/gpu``). This module starts the
extender there against the testbed's apiserver and reads its JSON request log to prove the
scheduler called it; pods live in a namespace of their own, removed afterwards.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml

from ecrl.testbed import procs
from ecrl.testbed.cluster import DEFAULT_EXTENDER_URL, TESTBED_DIR, Testbed

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NS = "ecrl-extender-e2e"
NAME = "extender"
SECOND_NODE = "ecrl-e2e-box2"


wait_until = partial(procs.wait_until, every_s=0.25)
"""The testbed's bounded poll (60 s unless told), at this module's pace."""


@pytest.fixture(scope="module")
def namespace(testbed: Testbed) -> Iterator[str]:
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    testbed.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
    # the ServiceAccount admission refuses pods until the controller made 'default'
    wait_until(
        "default ServiceAccount",
        lambda: testbed.kubectl("get", "sa", "default", "-n", NS, "-o", "name", check=False),
    )
    try:
        yield NS
    finally:
        testbed.kubectl("delete", "namespace", NS, "--wait=false", check=False)


@pytest.fixture(scope="module")
def extender(testbed: Testbed, namespace: str) -> Iterator[procs.Proc]:
    """The extender on the scheduler's URL, logging JSON lines to the testbed's run dir."""
    host_port = DEFAULT_EXTENDER_URL.removeprefix("http://")
    argv = [
        sys.executable,
        "-m",
        "services.scheduler_extender",
        "--listen",
        host_port,
        "--kubeconfig",
        str(testbed.kubeconfig),
    ]  # the default cache: list + watch
    proc = procs.start(testbed.name, NAME, argv, cwd=REPO)
    try:
        procs.wait_http(proc, f"{DEFAULT_EXTENDER_URL}/readyz", timeout_s=60)
        yield proc
    finally:
        procs.stop(testbed.name, NAME)


def gpu_pod(name: str, gpus: int) -> str:
    container = {
        "name": "triton",
        "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
        "resources": {"limits": {"nvidia.com/gpu": str(gpus), "cpu": "1", "memory": "1Gi"}},
    }
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": "extender-e2e"}},
            "spec": {"containers": [container]},
        }
    )


def pod_obj(tb: Testbed, name: str) -> dict:
    out = tb.kubectl("get", "pod", name, "-n", NS, "-o", "json", check=False)
    return json.loads(out) if out else {}


def running_on(tb: Testbed, name: str, timeout_s: float = 60.0) -> str:
    """Wait until pod ``name`` runs; returns its node."""

    def probe() -> str:
        obj = pod_obj(tb, name)
        ok = obj.get("status", {}).get("phase") == "Running"
        return obj["spec"].get("nodeName", "") if ok else ""

    return str(wait_until(f"pod {name} Running", probe, timeout_s))


def delete_pods(tb: Testbed, *names: str) -> None:
    tb.kubectl("delete", "pod", *names, "-n", NS, "--wait=false", "--ignore-not-found", check=False)


def calls(proc: procs.Proc, verb: str, pod: str) -> list[dict]:
    """The extender's request-log lines for ``verb`` about pod ``pod`` (name in NS)."""
    out = []
    for line in proc.log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("verb") == verb and rec.get("pod") == f"{NS}/{pod}":
            out.append(rec)
    return out


def cache_metric(name: str, labels: str) -> int:
    """One sample of the extender's own metrics (0 when absent)."""
    with urllib.request.urlopen(f"{DEFAULT_EXTENDER_URL}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else 0


def pod_changes_seen() -> int:
    """Pod watch events that changed the extender's view so far."""
    return cache_metric("ecrl_extender_cache_events_total", 'kind="pods",outcome="changed"')


def test_gpu_pod_is_filtered_by_the_extender_and_bound_to_box(
    testbed: Testbed, extender: procs.Proc
) -> None:
    testbed.kubectl("apply", "-f", "-", input_text=gpu_pod("ext-fits", 1))
    try:
        assert running_on(testbed, "ext-fits") == "box"
        (rec, *_) = wait_until(
            "filter call in the log", lambda: calls(extender, "filter", "ext-fits"), 10
        )
        assert rec["outcome"] == "ok" and rec["gpu_requested"] == 1
        assert rec["nodes"] == ["box"] and rec["result"]["passed"] == ["box"]
        print(f"\nfilter log line: {json.dumps(rec)}")
        assert not calls(extender, "prioritize", "ext-fits")  # one feasible node: no scoring
    finally:
        delete_pods(testbed, "ext-fits")


@pytest.fixture
def second_gpu_node(testbed: Testbed) -> Iterator[str]:
    """A copy of the reference box under another name, Ready and untainted; deleted after."""
    node = yaml.safe_load((TESTBED_DIR / "nodes-reference-box.yaml").read_text())
    node["metadata"]["name"] = SECOND_NODE
    node["metadata"]["labels"]["kubernetes.io/hostname"] = SECOND_NODE
    node["metadata"]["annotations"]["metrics.k8s.io/resource-metrics-path"] = (
        f"/metrics/nodes/{SECOND_NODE}/metrics/resource"
    )
    testbed.kubectl("apply", "-f", "-", input_text=json.dumps(node))

    def schedulable() -> bool:
        out = testbed.kubectl("get", "node", SECOND_NODE, "-o", "json", check=False)
        if not out:
            return False
        obj = json.loads(out)
        conds = obj.get("status", {}).get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
        return ready and not obj["spec"].get("taints")

    try:
        wait_until(f"node {SECOND_NODE} Ready and untainted", schedulable)
        yield SECOND_NODE
    finally:
        testbed.kubectl("delete", "node", SECOND_NODE, "--ignore-not-found", check=False)


def test_with_two_gpu_nodes_the_scheduler_asks_the_extender_to_prioritize(
    testbed: Testbed, extender: procs.Proc, second_gpu_node: str
) -> None:
    # box gets busy (a pod bound to it directly, no scheduler): the scores must prefer box2
    busy = json.loads(gpu_pod("ext-busy", 1))
    busy["spec"]["nodeName"] = "box"
    busy["spec"]["containers"][0]["resources"]["limits"].update(cpu="8", memory="16Gi")
    lists = cache_metric("ecrl_extender_cache_refreshes_total", 'outcome="ok"')
    seen = pod_changes_seen()
    testbed.kubectl("apply", "-f", "-", input_text=json.dumps(busy))
    try:
        running_on(testbed, "ext-busy")
        # the extender learns of the bound pod from its watch, not from another list
        wait_until("the busy pod's watch event", lambda: pod_changes_seen() > seen, 20)
        assert cache_metric("ecrl_extender_cache_refreshes_total", 'outcome="ok"') == lists
        scored_pod_lands_on_the_idle_node(testbed, extender, second_gpu_node)
    finally:
        delete_pods(testbed, "ext-busy")


def scored_pod_lands_on_the_idle_node(tb: Testbed, extender: procs.Proc, idle: str) -> None:
    """Both nodes pass the filter; the extender's scores (and the default plugins) pick idle."""
    tb.kubectl("apply", "-f", "-", input_text=gpu_pod("ext-scored", 1))
    try:
        chosen = running_on(tb, "ext-scored")
        (flt, *_) = wait_until("filter call", lambda: calls(extender, "filter", "ext-scored"), 10)
        assert sorted(flt["result"]["passed"]) == sorted(["box", idle])
        (pri, *_) = wait_until(
            "prioritize call", lambda: calls(extender, "prioritize", "ext-scored"), 10
        )
        print(f"\nprioritize log line: {json.dumps(pri)}\nbound to {chosen}")
        assert sorted(pri["nodes"]) == sorted(["box", idle]) and pri["outcome"] == "ok"
        assert pri["result"][idle] == 10 and pri["result"]["box"] < 10
        assert chosen == idle
    finally:
        delete_pods(tb, "ext-scored")
        wait_until("ext-scored gone", lambda: not pod_obj(tb, "ext-scored"))


def test_pod_asking_more_slots_than_any_node_has_stays_pending(
    testbed: Testbed, extender: procs.Proc
) -> None:
    testbed.kubectl("apply", "-f", "-", input_text=gpu_pod("ext-too-big", 5))

    def failed_scheduling() -> list[dict]:
        out = testbed.kubectl(
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            "involvedObject.name=ext-too-big,reason=FailedScheduling",
            "-o",
            "json",
            check=False,
        )
        return json.loads(out)["items"] if out else []

    try:
        (event, *_) = wait_until("FailedScheduling event", failed_scheduling)
        message = event["message"]
        print(f"FailedScheduling: {message}")
        assert "Insufficient nvidia.com/gpu" in message or "time-sliced slots" in message
        obj = pod_obj(testbed, "ext-too-big")
        assert obj["status"]["phase"] == "Pending" and not obj["spec"].get("nodeName")
    finally:
        delete_pods(testbed, "ext-too-big")


def test_pods_still_schedule_when_the_extender_is_down(
    testbed: Testbed, extender: procs.Proc
) -> None:
    """``ignorable: true``: an unreachable extender is skipped (this test runs last)."""
    assert procs.stop(testbed.name, NAME)
    assert not extender.alive()
    testbed.kubectl("apply", "-f", "-", input_text=gpu_pod("ext-no-extender", 1))
    try:
        assert running_on(testbed, "ext-no-extender") == "box"
    finally:
        delete_pods(testbed, "ext-no-extender")
