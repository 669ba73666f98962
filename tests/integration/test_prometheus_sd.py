"""The real Prometheus loads the testbed config and follows the emulator's file_sd files.

The data-plane emulator serves every pod's Triton metrics from one HTTP server, one path per
pod, and tells Prometheus so through file_sd entries carrying ``__metrics_path__``. This test
plays the emulator with a tiny ``http.server`` and checks that the series arrives under the
file_sd labels, with the config rendered from ``deploy/testbed/prometheus.yml`` itself.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest

from ecrl.filesd import write_sd
from ecrl.testbed import monitoring, procs
from ecrl.testbed.procs import free_port

pytestmark = pytest.mark.slow

CLUSTER = "itest-prom"
POD_PATH = "/metrics/pods/default/triton-0"
TRITON_TEXT = (
    "# HELP nv_inference_request_success Number of successful inference requests\n"
    "# TYPE nv_inference_request_success counter\n"
    'nv_inference_request_success{model="mobilenetv4",version="1"} 42\n'
)


class _Triton(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != POD_PATH:  # a wrong __metrics_path__ must not look like success
            self.send_error(404)
            return
        body = TRITON_TEXT.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def triton_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Triton)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def prometheus(tmp_path) -> Iterator[tuple[str, procs.Proc]]:
    if monitoring.prometheus_binary() is None:
        pytest.skip("prometheus not installed (make testbed-build installs the Debian package)")
    port = free_port()
    # No cluster here: kube-state-metrics and kwok's discovery point at closed ports; those jobs
    # show as down, which this test does not look at.
    values = {
        "SD_DIR": str(tmp_path / "sd"),
        "KSM_ADDRESS": f"127.0.0.1:{free_port()}",
        "KWOK_ADDRESS": f"127.0.0.1:{free_port()}",
        "PROM_ADDRESS": f"127.0.0.1:{port}",
    }
    try:
        proc = monitoring.start_prometheus_config(CLUSTER, values, port=port)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        procs.stop_all(CLUSTER)
        shutil.rmtree(procs.run_dir(CLUSTER), ignore_errors=True)


def test_file_sd_with_metrics_path_reaches_prometheus(prometheus, triton_server, tmp_path):
    prom_url, proc = prometheus
    labels = {"namespace": "default", "pod": "triton-0", "node": "box", "emulated": "true"}
    write_sd(
        tmp_path / "sd",
        "triton",
        [{"targets": [triton_server], "labels": {"__metrics_path__": POD_PATH, **labels}}],
    )

    result = monitoring.wait_for_series(
        prom_url, 'nv_inference_request_success{job="triton"}', timeout_s=60
    )

    assert len(result) == 1
    metric = result[0]["metric"]
    assert {k: metric.get(k) for k in labels} == labels
    assert metric["model"] == "mobilenetv4"
    assert float(result[0]["value"][1]) == 42.0
    # nothing of Prometheus listens beyond loopback
    listening = [
        c.laddr
        for c in psutil.Process(proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening
    assert all(addr.ip == "127.0.0.1" for addr in listening), listening


def test_query_error_is_reported(prometheus):
    prom_url, _ = prometheus
    with pytest.raises(monitoring.MonitoringError, match="bad_data"):
        monitoring.query(prom_url, "sum(")


def test_render_config_refuses_missing_placeholder():
    with pytest.raises(monitoring.MonitoringError, match="KWOK_ADDRESS"):
        monitoring.render_config({"SD_DIR": "/x", "KSM_ADDRESS": "a:1", "PROM_ADDRESS": "a:2"})
