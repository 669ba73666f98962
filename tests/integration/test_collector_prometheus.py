"""The collector against a real Prometheus that scrapes production-named metrics.

Two tiny ``http.server`` processes-in-threads play the exporters, writing the names and labels
the real ones write: the *exporters* server is Triton (per pod), dcgm-exporter (per node) and
the kubelet's resource metrics (kwok's emulation of them, with explicit sample timestamps as
the kubelet writes them); the *control* server is kube-state-metrics, kwok's Prometheus
discovery and Triton's model-config endpoint. Prometheus runs with the testbed's own config
(``deploy/testbed/prometheus.yml``), rendered by :mod:`ecrl.testbed.monitoring`.

The collector's state must decode to what was served; then frozen kubelet timestamps must turn
into missing inputs after ``stale_after_s`` (while Prometheus still answers the old samples),
a stopped exporter into missing inputs (never zeros), and stopped kube-state-metrics into
stale ticks that keep serving the last state with its age.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ecrl import schema
from ecrl.filesd import write_sd
from ecrl.testbed import monitoring, procs
from ecrl.testbed.procs import free_port
from ecrl.v1 import state_pb2, state_pb2_grpc
from services.collector.config import CollectorConfig
from services.collector.server import CollectorServer

pytestmark = pytest.mark.slow

CLUSTER = "itest-collector"
NS = "default"
DEPLOY = "mobilenetv4-triton"
RS = f"{DEPLOY}-7c9f8d"
PODS = {f"{RS}-aaaaa": 10.0, f"{RS}-bbbbb": 20.0}
"""Pod → successful requests per second."""
FAILED_RPS = {f"{RS}-aaaaa": 0.5, f"{RS}-bbbbb": 0.0}
CPU_CORES = {f"{RS}-aaaaa": 1.5, f"{RS}-bbbbb": 1.0}
WORKING_SET = {f"{RS}-aaaaa": 1.0 * 2**30, f"{RS}-bbbbb": 1.5 * 2**30}
QUEUE_S = {f"{RS}-aaaaa": 0.004, f"{RS}-bbbbb": 0.006}
LATENCY_S = {f"{RS}-aaaaa": 0.05, f"{RS}-bbbbb": 0.08}
P95_S = {f"{RS}-aaaaa": 0.08, f"{RS}-bbbbb": 0.12}
OTHER_POD = "other-app-5d4b9-zzzzz"
GIB = 2**30
MODEL_CONFIG = {
    "name": "mobilenetv4",
    "max_batch_size": 8,
    "instance_group": [{"count": 2, "kind": "KIND_GPU"}],
    "dynamic_batching": {"max_queue_delay_microseconds": 500},
}
STALE_AFTER_S = 8.0
RATE_WINDOW_S = 15.0
"""Three scrapes (the collector's default is 30 s): the test waits for a full window."""


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in kv.items()) + "}"


# ----------------------------------------------------------------------- exposition texts
def triton_text(pod: str, t: float) -> str:
    """One pod's Triton ``/metrics``: counters grow linearly, so rates are known."""
    mv = {"model": "mobilenetv4", "version": "1"}
    ok = PODS[pod] * t
    rows = [
        ("nv_inference_request_success", mv, ok),
        ("nv_inference_request_failure", {**mv, "reason": "REJECTED"}, FAILED_RPS[pod] * t),
        ("nv_inference_request_failure", {**mv, "reason": "BACKEND"}, 0.0),
        ("nv_inference_count", mv, ok),
        ("nv_inference_exec_count", mv, ok / 4),
        ("nv_inference_request_duration_us", mv, ok * LATENCY_S[pod] * 1e6),
        ("nv_inference_queue_duration_us", mv, ok * QUEUE_S[pod] * 1e6),
        ("nv_inference_compute_infer_duration_us", mv, ok * 0.02 * 1e6),
        ("nv_inference_pending_request_count", mv, 1.0),
    ]
    out = []
    for name, labels, value in rows:
        out.append(f"{name}{_labels(**labels)} {value}")
    out += [
        "# TYPE nv_inference_request_summary_us summary",
        f"nv_inference_request_summary_us{_labels(**mv, quantile='0.5')} {P95_S[pod] * 5e5}",
        f"nv_inference_request_summary_us{_labels(**mv, quantile='0.95')} {P95_S[pod] * 1e6}",
        f"nv_inference_request_summary_us_sum{_labels(**mv)} {ok * LATENCY_S[pod] * 1e6}",
        f"nv_inference_request_summary_us_count{_labels(**mv)} {ok}",
    ]
    return "\n".join(out) + "\n"


def dcgm_text() -> str:
    lab = _labels(
        gpu="0",
        UUID="GPU-0000",
        device="nvidia0",
        modelName="NVIDIA-GeForce-RTX-3080",
        Hostname="box",
    )
    return (
        f"DCGM_FI_DEV_GPU_UTIL{lab} 42\n"
        f"DCGM_FI_DEV_FB_USED{lab} 3000\n"
        f"DCGM_FI_DEV_FB_FREE{lab} 7240\n"
        f"DCGM_FI_DEV_GPU_TEMP{lab} 55\n"
    )


def kubelet_text(t: float, stamp_ms: int) -> str:
    """kwok's /metrics/nodes/box/metrics/resource, with the kubelet's explicit timestamps."""
    rows = []
    for pod in PODS:
        lab = _labels(container="triton", namespace=NS, pod=pod)
        rows += [
            f"container_cpu_usage_seconds_total{lab} {CPU_CORES[pod] * t} {stamp_ms}",
            f"container_memory_working_set_bytes{lab} {WORKING_SET[pod]} {stamp_ms}",
            f"pod_cpu_usage_seconds_total{_labels(namespace=NS, pod=pod)} {CPU_CORES[pod] * t} "
            f"{stamp_ms}",
        ]
    rows.append(f"node_memory_working_set_bytes {8 * GIB} {stamp_ms}")
    return "\n".join(rows) + "\n"


def ksm_text(now: float) -> str:
    """kube-state-metrics: our two pods, one pod of another Deployment on the same GPU node."""
    d = _labels(namespace=NS, deployment=DEPLOY)
    rows = [
        f"kube_deployment_spec_replicas{d} 2",
        f"kube_deployment_created{d} {now - 3600:.0f}",
        f"kube_deployment_metadata_generation{d} 3",
        "kube_replicaset_owner"
        + _labels(
            namespace=NS,
            replicaset=RS,
            owner_kind="Deployment",
            owner_name=DEPLOY,
            owner_is_controller="true",
        )
        + " 1",
        "kube_replicaset_owner"
        + _labels(
            namespace=NS,
            replicaset="other-app-5d4b9",
            owner_kind="Deployment",
            owner_name="other-app",
            owner_is_controller="true",
        )
        + " 1",
        f"kube_node_status_allocatable{_labels(node='box', resource='cpu', unit='core')} 16",
        f"kube_node_status_allocatable{_labels(node='box', resource='memory', unit='byte')} "
        f"{64 * GIB}",
        f"kube_node_status_allocatable"
        f"{_labels(node='box', resource='nvidia_com_gpu', unit='integer')} 4",
        f"kube_node_spec_unschedulable{_labels(node='box')} 0",
        f"kube_node_status_condition{_labels(node='box', condition='Ready', status='true')} 1",
        f"kube_node_status_condition{_labels(node='box', condition='Ready', status='false')} 0",
    ]
    pods = {**{p: RS for p in PODS}, OTHER_POD: "other-app-5d4b9"}
    for i, (pod, rs) in enumerate(pods.items()):
        base = {"namespace": NS, "pod": pod, "uid": f"uid-{i}"}
        rows += [
            "kube_pod_owner"
            + _labels(**base, owner_kind="ReplicaSet", owner_name=rs, owner_is_controller="true")
            + " 1",
            "kube_pod_info"
            + _labels(
                **base,
                host_ip="10.0.0.1",
                pod_ip=f"10.1.0.{i}",
                node="box",
                created_by_kind="ReplicaSet",
                created_by_name=rs,
            )
            + " 1",
            f"kube_pod_created{_labels(**base)} {now - 600 + 60 * i:.0f}",
            f"kube_pod_status_ready{_labels(**base, condition='true')} 1",
            f"kube_pod_status_ready{_labels(**base, condition='false')} 0",
            f"kube_pod_status_ready_time{_labels(**base)} {now - 590 + 60 * i:.0f}",
            f"kube_pod_status_phase{_labels(**base, phase='Running')} 1",
            f"kube_pod_status_phase{_labels(**base, phase='Pending')} 0",
        ]
        for kind in ("requests", "limits"):
            c = {**base, "container": "triton", "node": "box"}
            rows += [
                f"kube_pod_container_resource_{kind}{_labels(**c, resource='cpu', unit='core')} 2",
                f"kube_pod_container_resource_{kind}"
                f"{_labels(**c, resource='memory', unit='byte')} {4 * GIB}",
                f"kube_pod_container_resource_{kind}"
                f"{_labels(**c, resource='nvidia_com_gpu', unit='integer')} 1",
            ]
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- servers
class _Server:
    """A ThreadingHTTPServer on a free loopback port, routed by a function of the path."""

    def __init__(self, route: Callable[[str], tuple[int, str, str]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, ctype, text = route(self.path)
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)


TEXT = "text/plain; version=0.0.4"


class Exporters:
    """Triton + DCGM + kubelet resource metrics; the kubelet's timestamps can be frozen."""

    def __init__(self) -> None:
        self.t0 = time.time() - 60.0  # counters as if serving for a minute already
        self.frozen_kubelet: str | None = None
        self.server = _Server(self.route)

    def route(self, path: str) -> tuple[int, str, str]:
        now = time.time()
        if path.startswith(f"/metrics/pods/{NS}/"):
            pod = path.rsplit("/", 1)[1]
            if pod in PODS:
                return 200, TEXT, triton_text(pod, now - self.t0)
        if path == "/metrics/gpus/box":
            return 200, TEXT, dcgm_text()
        if path == "/metrics/nodes/box/metrics/resource":
            text = self.frozen_kubelet or kubelet_text(now - self.t0, int(now * 1000))
            return 200, TEXT, text

        return 404, TEXT, "not found\n"

    def freeze_kubelet(self) -> None:
        """Keep serving one body: same samples, same timestamps (a stuck kubelet)."""
        now = time.time()
        self.frozen_kubelet = kubelet_text(now - self.t0, int(now * 1000))


class Control:
    """kube-state-metrics, kwok's Prometheus discovery, Triton's model config."""

    def __init__(self, exporters_address: str) -> None:
        self.exporters_address = exporters_address
        self.server = _Server(self.route)

    def route(self, path: str) -> tuple[int, str, str]:
        if path == "/metrics":
            return 200, TEXT, ksm_text(time.time())
        if path == "/discovery/prometheus":
            groups = [
                {
                    "targets": [self.exporters_address],
                    "labels": {"__metrics_path__": "/metrics/nodes/box/metrics/resource"},
                }
            ]
            return 200, "application/json", json.dumps(groups)
        if path == "/v2/models/mobilenetv4/config":
            return 200, "application/json", json.dumps(MODEL_CONFIG)
        return 404, TEXT, "not found\n"


@pytest.fixture
def stack(tmp_path) -> Iterator[dict]:
    if monitoring.prometheus_binary() is None:
        pytest.skip("prometheus not installed (make testbed-build installs the Debian package)")
    exporters = Exporters()
    control = Control(exporters.server.address)
    sd = tmp_path / "sd"
    write_sd(
        sd,
        "triton",
        [
            {
                "targets": [exporters.server.address],
                "labels": {
                    "__metrics_path__": f"/metrics/pods/{NS}/{pod}",
                    "namespace": NS,
                    "pod": pod,
                    "node": "box",
                    "emulated": "true",
                },
            }
            for pod in PODS
        ],
    )
    write_sd(
        sd,
        "dcgm",
        [
            {
                "targets": [exporters.server.address],
                "labels": {"__metrics_path__": "/metrics/gpus/box", "node": "box"},
            }
        ],
    )
    port = free_port()
    values = {
        "SD_DIR": str(sd),
        "KSM_ADDRESS": control.server.address,
        "KWOK_ADDRESS": control.server.address,
        "PROM_ADDRESS": f"127.0.0.1:{port}",
    }
    server = None
    try:
        monitoring.start_prometheus_config(CLUSTER, values, port=port)
        config = CollectorConfig(
            prometheus_url=f"http://127.0.0.1:{port}",
            triton_url=f"http://{control.server.address}",
            namespace=NS,
            deployment=DEPLOY,
            period_s=1.0,
            stale_after_s=STALE_AFTER_S,
            rate_window_s=RATE_WINDOW_S,
            min_replicas=1,
            max_replicas=4,
            slo_p95_s=0.15,
            grpc_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
        )
        server = CollectorServer(config)
        server.start()
        yield {
            "server": server,
            "prom_url": f"http://127.0.0.1:{port}",
            "exporters": exporters,
            "control": control,
        }
    finally:
        if server is not None:
            server.stop()
        exporters.server.stop()
        control.server.stop()
        procs.stop_all(CLUSTER)
        shutil.rmtree(procs.run_dir(CLUSTER), ignore_errors=True)


# ------------------------------------------------------------------------------ helpers
def features(msg: state_pb2.StateVector) -> dict[str, float]:
    return dict(zip(schema.FEATURE_NAMES, msg.values, strict=True))


def wait_state(
    stub: state_pb2_grpc.StateServiceStub,
    ok: Callable[[dict[str, float], state_pb2.StateVector], bool],
    timeout_s: float,
) -> state_pb2.StateVector:
    """Poll GetState until ``ok(features, state)``; the error shows the last state."""
    deadline = time.monotonic() + timeout_s
    last: state_pb2.StateVector | None = None
    while time.monotonic() < deadline:
        try:
            last = stub.GetState(state_pb2.GetStateRequest(), timeout=2).state
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        else:
            if ok(features(last), last):
                return last
        time.sleep(0.5)
    detail = None if last is None else (features(last), list(last.missing_inputs))
    raise AssertionError(f"no matching state within {timeout_s} s; last: {detail}")


def http_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def expected_features() -> dict[str, float]:
    total = sum(PODS.values()) + sum(FAILED_RPS.values())
    rates = {p: PODS[p] + FAILED_RPS[p] for p in PODS}
    p95 = sum(P95_S[p] * rates[p] for p in PODS) / total
    return {
        "request_rate_rps": total,
        "rate_per_ready_rps": total / 2,
        "p95_over_slo": p95 / 0.15,
        "success_ratio": sum(PODS.values()) / total,
        "gpu_util_ratio": 0.42,
        "vram_used_gib": 3000 / 1024,
        "vram_free_gib": 7240 / 1024,
        "cpu_usage_ratio": (1.5 + 1.0) / 2 / 2.0,
        "memory_usage_ratio": 1.5 / 4.0,
        "queue_time_ms": 5.0,
        "concurrency_per_ready": (10.0 * 0.05 + 20.0 * 0.08) / 2,
        "desired_replicas": 2,
        "ready_replicas": 2,
        "pending_replicas": 0,
        "replica_headroom_up": 2,
        "replica_headroom_down": 1,
        "free_gpu_slots": 1,  # 4 slots, our 2 pods and the other Deployment's pod hold 3
        "cpu_request_cores": 2.0,
        "memory_request_gib": 4.0,
        "log2_max_batch_size": 3.0,
        "batch_delay_ms": 0.5,
        "instance_count": 2,
        "slo_p95_ms": 150.0,
    }


# -------------------------------------------------------------------------------- the test
def test_collector_states_follow_prometheus_and_mark_stale_inputs_missing(stack) -> None:
    server: CollectorServer = stack["server"]
    assert server.grpc is not None and server.http is not None
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc.port}")
    stub = state_pb2_grpc.StateServiceStub(channel)
    http = f"http://127.0.0.1:{server.http.port}"
    want = expected_features()

    # 1. every served value arrives, decoded from the state vector. Rates need two scrapes,
    #    and Prometheus' rate() extrapolates a series younger than the window only part of
    #    the way, so they reach the served rate once the window is full of samples.
    #    (kwok's kubelet target is found by http_sd a few seconds after the file_sd ones.)
    def all_present(f: dict[str, float], _s) -> bool:
        present = all(f[f"{o.name}_missing"] == 0 for o in schema.OPTIONAL if o.name in want)
        return present and all(f[n] == pytest.approx(v, rel=0.03) for n, v in want.items())

    state = wait_state(stub, all_present, timeout_s=90)
    got = features(state)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=0.03), name
    assert state.schema_hash == schema.SCHEMA_HASH and state.schema_version == schema.SCHEMA_VERSION
    # Prometheus has only seconds of history: the time since the last change is unknown
    assert "last_change_age_s" in state.missing_inputs
    assert got["last_change_age_s_missing"] == 1.0
    assert abs(time.time() - state.observed_at.ToSeconds()) < STALE_AFTER_S

    # ... the same state over HTTP JSON, with the decoded observation
    status, doc = http_json(f"{http}/state")
    assert status == 200 and doc["schema_hash"] == schema.SCHEMA_HASH
    assert doc["features"]["free_gpu_slots"] == 1 and doc["missing"]["gpu_util_ratio"] is False
    assert {p["name"] for p in doc["observation"]["pods"]} == set(PODS)
    assert doc["stale"] is False and doc["age_s"] < STALE_AFTER_S
    with urllib.request.urlopen(f"{http}/metrics", timeout=5) as resp:
        metrics_text = resp.read().decode()
    assert "ecrl_collector_tick_duration_seconds_bucket" in metrics_text
    assert 'ecrl_collector_ticks_total{outcome="state"}' in metrics_text
    assert http_json(f"{http}/healthz")[0] == 200 and http_json(f"{http}/readyz")[0] == 200

    # ... a tick (two PromQL requests: the union of the instant queries, and the history) takes well under the period
    registry = server.collector.metrics.registry
    tick_s = registry.get_sample_value("ecrl_collector_tick_duration_seconds_sum")
    ticks = registry.get_sample_value("ecrl_collector_tick_duration_seconds_count")
    print(f"collector: {ticks:.0f} ticks, mean {1e3 * tick_s / ticks:.1f} ms")
    assert tick_s / ticks < 1.0

    # ... and WatchState streams one state per tick
    stream = stub.WatchState(state_pb2.WatchStateRequest(), timeout=15)
    ticks = []
    for msg in stream:
        ticks.append(msg.state.tick)
        if len(ticks) == 3:
            stream.cancel()
            break
    assert ticks == sorted(ticks) and len(set(ticks)) == 3

    # 2. a stuck kubelet: Prometheus still answers its old samples (5 min lookback), the
    #    collector marks them missing once they are older than stale_after_s
    stack["exporters"].freeze_kubelet()
    frozen_at = time.monotonic()
    state = wait_state(
        stub,
        lambda f, _s: f["cpu_usage_ratio_missing"] == 1 and f["memory_usage_ratio_missing"] == 1,
        timeout_s=STALE_AFTER_S + 20,
    )
    assert time.monotonic() - frozen_at >= STALE_AFTER_S - 5.0  # not before they were stale
    got = features(state)
    assert got["cpu_usage_ratio"] == 0.0 and got["memory_usage_ratio"] == 0.0
    assert got["gpu_util_ratio_missing"] == 0 and got["request_rate_rps_missing"] == 0
    assert any(m.startswith("cpu_usage_cores@") for m in state.missing_inputs)
    assert monitoring.query(stack["prom_url"], "container_memory_working_set_bytes")

    # 3. the exporters stop: their inputs are missing (flag 1, value 0), never zeros served as
    #    data; the required inputs (kube-state-metrics, Triton's config) still make states
    stack["exporters"].server.stop()
    optional = ("request_rate_rps", "success_ratio", "gpu_util_ratio", "vram_used_gib")
    state = wait_state(
        stub,
        lambda f, _s: all(f[f"{n}_missing"] == 1 for n in optional),
        timeout_s=STALE_AFTER_S + 20,
    )
    got = features(state)
    assert all(got[n] == 0.0 for n in optional)
    assert {"request_rate_rps", "gpu_util_ratio", "vram_used_bytes", "p95_latency_s"} <= set(
        state.missing_inputs
    )
    assert got["ready_replicas"] == 2 and got["free_gpu_slots"] == 1

    # 4. kube-state-metrics and Triton go too: no new state; the last one is served with
    #    its age and the reason, and health says the state is not fresh
    last_tick = state.tick
    stack["control"].server.stop()
    deadline = time.monotonic() + STALE_AFTER_S + 20
    while time.monotonic() < deadline:
        status, doc = http_json(f"{http}/state")
        if doc.get("stale"):
            break
        time.sleep(0.5)
    assert doc["stale"] is True and "triton_model_config" in doc["stale_inputs"]
    response, call = stub.GetState.with_call(state_pb2.GetStateRequest(), timeout=2)
    assert response.state.tick >= last_tick
    trailing = dict(call.trailing_metadata())
    assert "triton_model_config" in trailing["ecrl-stale-inputs"]
    assert float(trailing["ecrl-state-age-s"]) >= 0.0
    # two more stale ticks later, still the same state (none is made from stale inputs)
    stale_ticks = registry.get_sample_value("ecrl_collector_ticks_total", {"outcome": "stale"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now_stale = registry.get_sample_value("ecrl_collector_ticks_total", {"outcome": "stale"})
        if now_stale >= stale_ticks + 2:
            break
        time.sleep(0.2)
    assert now_stale >= stale_ticks + 2
    assert stub.GetState(state_pb2.GetStateRequest(), timeout=2).state.tick == response.state.tick
    # once the last state is older than stale_after + one period, nobody should act on it
    health = health_pb2_grpc.HealthStub(channel)
    check = health_pb2.HealthCheckRequest(service="ecrl.v1.StateService")
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

    def blind() -> bool:  # health follows the tick, /readyz the clock: both must say so
        ready = http_json(f"{http}/readyz")[0]
        return ready == 503 and health.Check(check, timeout=2).status == not_serving

    deadline = time.monotonic() + STALE_AFTER_S + 10
    while time.monotonic() < deadline and not blind():
        time.sleep(0.5)
    assert blind()
    channel.close()
