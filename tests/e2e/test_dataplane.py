"""The data plane on the testbed: the emulator serves the Deployment's real pods to real
Locust users, Prometheus scrapes its Triton and DCGM series, and latency rises past capacity.

Capacity the assertions use: with the reference profile (28 ms CPU per request, 2-core limit,
50 m idle) and the emulator's time scale of 4, one pod serves at most 1.95 / 0.112 ≈ 17.4
req/s, while 30 Locust users with a 0.4–1.0 s think time offer about 35 req/s.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ecrl import serving
from ecrl.load.locust_run import run_locust
from ecrl.testbed import monitoring as mon
from ecrl.testbed.cluster import Testbed

pytestmark = pytest.mark.e2e
SELECTOR = "app.kubernetes.io/name=mobilenetv4-triton"


def capacity_rps(time_scale: float) -> float:
    from ecrl.twin.profile import builtin_profile_path, load_profile

    s = load_profile(builtin_profile_path("rtx3080-mobilenetv4")).server
    return (2.0 - s.cpu_idle_cores) / (s.cpu_s_per_request * time_scale)


def test_prometheus_has_the_emulators_triton_and_dcgm_series(
    testbed: Testbed, deployment, dataplane, monitoring
) -> None:
    deployment(replicas=2)
    import tritonclient.http as th

    client = th.InferenceServerClient(dataplane.http_url.removeprefix("http://"))
    x = np.zeros((1, *serving.INPUT_SHAPE), np.float32)
    inp = th.InferInput(serving.INPUT_NAME, list(x.shape), serving.DATATYPE)
    inp.set_data_from_numpy(x)
    for _ in range(20):
        client.infer(serving.MODEL_NAME, [inp])
    prom = monitoring.prom_url
    # both pods got traffic through the emulated Service, and every request was counted: a
    # scrape taken while the 20 requests ran holds part of them, so wait for one taken after
    per_pod = 'sum by (pod) (nv_inference_request_success{emulated="true",namespace="default"})'
    mon.wait_for_series(prom, f"count({per_pod} > 0) == 2 and sum({per_pod}) == 20", 60)
    ok = mon.query(prom, per_pod)
    assert {r["metric"]["pod"] for r in ok} == set(pod_names(testbed))
    assert sum(float(r["value"][1]) for r in ok) == 20
    util = mon.wait_for_series(
        prom, 'DCGM_FI_DEV_GPU_UTIL{emulated="true",Hostname="box"}', timeout_s=60
    )
    assert util[0]["metric"]["modelName"] == "NVIDIA-GeForce-RTX-3080"
    fb = mon.query(prom, 'DCGM_FI_DEV_FB_USED{Hostname="box"}')
    assert float(fb[0]["value"][1]) > 0  # two replicas hold VRAM


def test_locust_csv_shows_latency_rising_when_load_exceeds_capacity(
    testbed: Testbed, deployment, dataplane, tmp_path: Path
) -> None:
    deployment(replicas=1)
    trace = tmp_path / "step.csv"
    trace.write_text("time_s,users\n0,3\n25,3\n25,30\n60,30\n")
    res = run_locust(dataplane.http_url, str(trace), tmp_path / "run", grpc_url=dataplane.grpc_url)
    assert res.total_requests > 300 and res.total_failures == 0
    assert set(res.totals["request_type"]) >= {"HTTP", "gRPC"}
    req = res.requests
    assert req is not None
    t = req["timestamp"] - req["timestamp"].min()
    low = req[(t >= 8) & (t < 24)]
    high = req[(t >= 40) & (t < 58)]
    p50_low, p50_high = low["response_time_ms"].median(), high["response_time_ms"].median()
    assert p50_high > 3 * p50_low, (p50_low, p50_high)
    served_rps = len(high) / 18.0
    cap = capacity_rps(dataplane.time_scale)
    assert 0.75 * cap < served_rps < 1.15 * cap, (served_rps, cap)


def pod_names(tb: Testbed) -> list[str]:
    out = tb.kubectl("get", "pods", "-l", SELECTOR, "-o", "json")
    return [
        p["metadata"]["name"]
        for p in json.loads(out)["items"]
        if not p["metadata"].get("deletionTimestamp")
    ]


CONTROL_PLANE = {
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok-controller",
    "etcd",
    "metrics-server",
}
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def test_every_testbed_process_listens_on_loopback_only(
    testbed: Testbed, dataplane, monitoring
) -> None:
    import psutil

    ours = {dataplane.proc.pid, monitoring.prometheus.pid, monitoring.ksm.pid}
    listening: dict[str, set[str]] = {}
    for c in psutil.net_connections(kind="inet"):
        if c.status != psutil.CONN_LISTEN or c.pid is None:
            continue
        try:
            name = psutil.Process(c.pid).name()
        except psutil.NoSuchProcess:
            continue
        if c.pid in ours or name in CONTROL_PLANE:
            listening.setdefault(name if c.pid not in ours else f"{name}[{c.pid}]", set()).add(
                c.laddr.ip
            )
    assert {"kube-apiserver", "etcd", "kwok-controller", "metrics-server"} <= set(listening), (
        listening
    )
    assert len([n for n in listening if "[" in n]) == 3, listening  # emulator, Prometheus, KSM
    beyond = {n: ips - LOOPBACK for n, ips in listening.items() if ips - LOOPBACK}
    assert not beyond, f"listening beyond loopback: {beyond}"
