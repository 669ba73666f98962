"""The real kube-scheduler on the emulated GPU node: time-sliced slots are a hard limit."""

from __future__ import annotations

import json
import time

import pytest

from ecrl.testbed.cluster import Testbed

pytestmark = pytest.mark.e2e


def pod(name: str, gpus: int) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "containers": [
                    {
                        "name": "triton",
                        "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
                        "resources": {
                            "limits": {"nvidia.com/gpu": str(gpus), "cpu": "1", "memory": "1Gi"},
                        },
                    }
                ]
            },
        }
    )


def wait_for(tb: Testbed, name: str, predicate, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    obj: dict = {}
    while time.monotonic() < deadline:
        out = tb.kubectl("get", "pod", name, "-o", "json", check=False)
        if out:
            obj = json.loads(out)
            if predicate(obj):
                return obj
        time.sleep(0.5)
    raise AssertionError(
        f"pod {name} did not reach the state in {timeout_s} s: {obj.get('status')}"
    )


def test_gpu_node_advertises_time_sliced_slots(testbed: Testbed) -> None:
    node = json.loads(testbed.kubectl("get", "node", "box", "-o", "json"))
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert node["metadata"]["labels"]["nvidia.com/gpu.sharing-strategy"] == "time-slicing"


def test_pod_with_one_slot_is_bound_to_the_gpu_node_and_runs(testbed: Testbed) -> None:
    testbed.kubectl("apply", "-f", "-", input_text=pod("fits", 1))
    try:
        obj = wait_for(testbed, "fits", lambda o: o["status"].get("phase") == "Running")
        assert obj["spec"]["nodeName"] == "box"
    finally:
        testbed.kubectl("delete", "pod", "fits", "--wait=false", check=False)


def test_pod_asking_more_slots_than_exist_stays_pending(testbed: Testbed) -> None:
    testbed.kubectl("apply", "-f", "-", input_text=pod("too-big", 5))
    try:
        obj = wait_for(
            testbed,
            "too-big",
            lambda o: any(
                c.get("reason") == "Unschedulable" for c in o["status"].get("conditions", [])
            ),
        )
        assert obj["status"]["phase"] == "Pending" and not obj["spec"].get("nodeName")
        msg = next(c["message"] for c in obj["status"]["conditions"] if c["type"] == "PodScheduled")
        assert "nvidia.com/gpu" in msg
    finally:
        testbed.kubectl("delete", "pod", "too-big", "--wait=false", check=False)
