"""The collector on the testbed: its state comes from the real Prometheus, which scrapes the
real kube-state-metrics, kwok's kubelet resource metrics and the emulator's Triton and DCGM
series, while real requests flow through the emulated Service.

The collector runs as its own process through its command line, as it would in the cluster.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ecrl import schema, serving
from ecrl.testbed import monitoring as mon
from ecrl.testbed import procs
from ecrl.testbed.cluster import Testbed
from ecrl.testbed.dataplane import DataPlane
from ecrl.testbed.procs import free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
SELECTOR = "app.kubernetes.io/name=mobilenetv4-triton"
EXPLAINED_MISSING = {
    "last_change_age_s": "Prometheus and the collector are younger than the 10 min window",
}


@pytest.fixture
def load(dataplane: DataPlane) -> Iterator[dict]:
    """About 10 requests per second through the emulated Service, from ``start`` to the end
    of the test; a refused request (no pod ready yet) is counted, not raised."""
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}

    def run() -> None:
        client = th.InferenceServerClient(dataplane.http_url.removeprefix("http://"))
        x = np.zeros((1, *serving.INPUT_SHAPE), np.float32)
        inp = th.InferInput(serving.INPUT_NAME, list(x.shape), serving.DATATYPE)
        inp.set_data_from_numpy(x)
        while not stop.is_set():
            try:
                client.infer(serving.MODEL_NAME, [inp])
                counts["ok"] += 1
            except InferenceServerException:
                counts["failed"] += 1
            stop.wait(0.1)
        client.close()

    thread = threading.Thread(target=run, daemon=True)
    try:
        yield {"counts": counts, "start": thread.start}
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=10)


@pytest.fixture
def collector(testbed: Testbed, monitoring: mon.Monitoring, dataplane: DataPlane) -> Iterator[str]:
    """``python -m services.collector`` against the testbed; yields its HTTP base URL."""
    http_port = free_port()
    proc = procs.start(
        testbed.name,
        "collector",
        [
            sys.executable,
            "-m",
            "services.collector",
            f"--prometheus={monitoring.prom_url}",
            f"--triton-url={dataplane.http_url}",
            "--namespace=default",
            "--deployment=mobilenetv4-triton",
            "--period=2",
            "--min-replicas=1",
            "--max-replicas=4",
            "--slo-p95=0.15",
            f"--grpc-listen=127.0.0.1:{free_port()}",
            f"--http-listen=127.0.0.1:{http_port}",
        ],
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        procs.wait_http(proc, f"{url}/healthz", timeout_s=30)
        yield url
    finally:
        procs.stop(testbed.name, "collector")


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def gpu_slots_free(tb: Testbed, node: str = "box") -> int:
    """Allocatable nvidia.com/gpu of ``node`` minus what its live pods request (kubectl)."""
    n = json.loads(tb.kubectl("get", "node", node, "-o", "json"))
    alloc = int(n["status"]["allocatable"]["nvidia.com/gpu"])
    pods = json.loads(tb.kubectl("get", "pods", "-A", "-o", "json"))["items"]
    held = 0
    for p in pods:
        if p["spec"].get("nodeName") != node or p["status"].get("phase") not in (
            "Pending",
            "Running",
        ):
            continue
        for c in p["spec"]["containers"]:
            held += int(c.get("resources", {}).get("requests", {}).get("nvidia.com/gpu", 0))
    return alloc - held


def test_collector_state_comes_from_prometheus(
    testbed: Testbed, deployment, dataplane, monitoring, load, collector
) -> None:
    deployment(replicas=2)
    load["start"]()
    deadline = time.monotonic() + 120
    doc: dict = {}
    while time.monotonic() < deadline:
        status, doc = get_json(f"{collector}/state")
        f = doc.get("features", {})
        m = doc.get("missing", {})
        if (
            status == 200
            and f["ready_replicas"] == 2
            and f["desired_replicas"] == 2
            and not m["request_rate_rps"]
            and f["request_rate_rps"] > 0
            and not m["gpu_util_ratio"]
            and not m["cpu_usage_ratio"]
            # a young pod's rates need two scrapes inside the window: wait until nothing but
            # the explained inputs is missing (per-pod ones included)
            and not set(doc["missing_inputs"]) - set(EXPLAINED_MISSING)
        ):
            break
        time.sleep(1.0)
    else:
        pytest.fail(f"no complete state within 120 s; last /state: {doc}")

    assert load["counts"]["ok"] > 0
    assert doc["schema_hash"] == schema.SCHEMA_HASH and len(doc["values"]) == schema.STATE_DIM
    obs = doc["observation"]
    names = {
        p["metadata"]["name"]
        for p in json.loads(testbed.kubectl("get", "pods", "-l", SELECTOR, "-o", "json"))["items"]
        if not p["metadata"].get("deletionTimestamp")
    }
    assert {p["name"] for p in obs["pods"]} == names
    assert all(p["ready"] for p in obs["pods"])
    # the baseline Deployment's resources and the emulator's Triton config
    assert obs["cpu_request_cores"] == 2.0 and obs["memory_request_bytes"] == 4 * 2**30
    assert obs["max_batch_size"] >= 1 and obs["instance_count"] >= 1
    assert obs["free_gpu_slots"] == gpu_slots_free(testbed)
    assert 0.0 <= doc["features"]["gpu_util_ratio"] <= 1.0
    assert doc["features"]["vram_used_gib"] > 0  # two replicas hold framebuffer
    assert 0.0 < doc["features"]["success_ratio"] <= 1.0

    # p95 from Triton's latency summary (the emulator exports it as Triton does with
    # summary_latencies=true); nothing else is reported missing without a reason
    assert not doc["missing"]["p95_over_slo"] and doc["features"]["p95_over_slo"] > 0
    assert mon.query(monitoring.prom_url, "nv_inference_request_summary_us")
    unexplained = set(doc["missing_inputs"]) - set(EXPLAINED_MISSING)
    assert not unexplained, (unexplained, doc["observation"])

    # the collector's own metrics: ticks produce states in well under a period
    with urllib.request.urlopen(f"{collector}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("ecrl_collector_tick_duration_seconds_")
    }
    ticks = values["ecrl_collector_tick_duration_seconds_count"]
    mean_tick_s = values["ecrl_collector_tick_duration_seconds_sum"] / ticks
    print(f"collector: {ticks:.0f} ticks, mean tick {1e3 * mean_tick_s:.1f} ms")
    assert mean_tick_s < 2.0
