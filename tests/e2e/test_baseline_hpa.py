"""The real HPA scales the baseline Deployment on CPU usage reported through metrics-server.

The test plays the data-plane emulator's part for CPU: it writes each pod's usage annotation
(kwok.x-k8s.io/usage-cpu), which kwok turns into kubelet resource metrics and the real
metrics-server serves to the real HPA. Bounds: up to 4 replicas within 300 s of the load
(each doubling waits for the new pods' first metrics, about 60 s); back to 1 within 240 s of
the load going away (scale-down window set to 15 s here).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ecrl.testbed.cluster import Testbed

pytestmark = pytest.mark.e2e
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "baseline" / "mobilenetv4-triton.yaml"
SELECTOR = "app.kubernetes.io/name=mobilenetv4-triton"


def annotate_usage(tb: Testbed, cpu: str) -> None:
    tb.kubectl("annotate", "pods", "-l", SELECTOR, f"kwok.x-k8s.io/usage-cpu={cpu}", "--overwrite")


def replicas(tb: Testbed) -> tuple[int, int]:
    d = json.loads(tb.kubectl("get", "deployment", "mobilenetv4-triton", "-o", "json"))
    return d["spec"]["replicas"], d["status"].get("readyReplicas", 0)


def wait_replicas(tb: Testbed, want: int, cpu: str, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        annotate_usage(tb, cpu)  # new pods get the same usage, as under a steady load
        spec, ready = replicas(tb)
        if spec == want and ready == want:
            return time.monotonic() - t0
        time.sleep(2.0)
    raise AssertionError(f"replicas {replicas(tb)} did not reach {want} in {timeout_s} s")


def test_hpa_scales_the_baseline_up_under_load_and_back_down(testbed: Testbed) -> None:
    testbed.kubectl("apply", "-f", str(MANIFEST))
    try:
        testbed.kubectl(
            "patch",
            "hpa",
            "mobilenetv4-triton",
            "--type=merge",
            "-p",
            '{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":15}}}}',
        )
        wait_replicas(testbed, 1, "100m", 60)
        up_s = wait_replicas(testbed, 4, "1900m", 300)  # 95 % of the 2-core request
        nodes = testbed.kubectl(
            "get", "pods", "-l", SELECTOR, "-o", "jsonpath={.items[*].spec.nodeName}"
        ).split()
        assert nodes == ["box"] * 4  # the real scheduler placed every replica on the GPU node
        down_s = wait_replicas(testbed, 1, "100m", 240)
        assert up_s < 300 and down_s < 240
    finally:
        testbed.kubectl("delete", "-f", str(MANIFEST), "--wait=false", check=False)
