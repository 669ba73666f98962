"""Baseline mode live: under a Locust step load the real HPA scales the Deployment up, the real
kube-scheduler places the new pods on the kwok GPU node, and after the load the HPA scales back.

The chain is all real except the data plane: Locust (tritonclient users) → the emulator's
Service → emulated pods, whose CPU usage the emulator writes as kwok annotations → kwok's
kubelet resource metrics → metrics-server → the HPA in kube-controller-manager → the
Deployment → the scheduler.

Bounds: at least 2 replicas within 150 s of the step (metrics-server resolves usage every
15 s, the HPA syncs every 15 s, and a new pod's first metrics take about a minute); back to
1 replica within 240 s of the load ending (the scale-down stabilization window is set to
15 s here instead of 300 s to keep CI short). One saturated pod (17 req/s at time scale 4)
against 30 users (~35 req/s offered) drives CPU to the 2-core limit, 122 % of the 80 % target.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from ecrl.load.locust_run import LocustResult, run_locust
from ecrl.testbed.cluster import Testbed

pytestmark = pytest.mark.e2e
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "baseline" / "mobilenetv4-triton.yaml"
SELECTOR = "app.kubernetes.io/name=mobilenetv4-triton"
STEP_AT_S = 20
LOAD_END_S = 200


def replicas(tb: Testbed) -> tuple[int, int]:
    d = json.loads(tb.kubectl("get", "deployment", "mobilenetv4-triton", "-o", "json"))
    return d["spec"]["replicas"], d["status"].get("readyReplicas", 0)


def test_hpa_scales_the_baseline_up_under_a_locust_step_and_back_down(
    testbed: Testbed, dataplane, tmp_path: Path
) -> None:
    testbed.kubectl("apply", "-f", str(MANIFEST))
    result: dict[str, LocustResult | BaseException] = {}
    try:
        testbed.kubectl(
            "patch",
            "hpa",
            "mobilenetv4-triton",
            "--type=merge",
            "-p",
            '{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":15}}}}',
        )
        dataplane.wait_pods(1, timeout_s=60)
        trace = tmp_path / "step.csv"
        trace.write_text(f"time_s,users\n0,3\n{STEP_AT_S},3\n{STEP_AT_S},30\n{LOAD_END_S},30\n")

        def load() -> None:
            try:
                result["run"] = run_locust(
                    dataplane.http_url, str(trace), tmp_path / "run", grpc_url=dataplane.grpc_url
                )
            except BaseException as exc:  # surfaced by the assertion below
                result["run"] = exc

        t0 = time.monotonic()
        locust = threading.Thread(target=load, daemon=True)
        locust.start()
        up_s = None
        peak = 1
        while locust.is_alive():
            _, ready = replicas(testbed)
            peak = max(peak, ready)
            if up_s is None and ready >= 2:
                up_s = time.monotonic() - t0 - STEP_AT_S
            time.sleep(2.0)
        locust.join()
        run = result["run"]
        assert isinstance(run, LocustResult), run
        assert up_s is not None and up_s < 150, f"no scale-up within 150 s (peak {peak})"
        nodes = testbed.kubectl(
            "get", "pods", "-l", SELECTOR, "-o", "jsonpath={.items[*].spec.nodeName}"
        ).split()
        assert nodes and set(nodes) == {"box"}  # the real scheduler placed them on the GPU node
        t_end = time.monotonic()
        while replicas(testbed) != (1, 1):
            assert time.monotonic() - t_end < 240, f"still {replicas(testbed)} after 240 s"
            time.sleep(2.0)
        down_s = time.monotonic() - t_end
        assert run.total_requests > 1000
        print(f"scale-up {up_s:.0f} s after the step (peak {peak}), scale-down {down_s:.0f} s")
    finally:
        testbed.kubectl("delete", "-f", str(MANIFEST), "--wait=false", check=False)
