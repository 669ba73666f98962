"""The real Prometheus scrapes the real kube-state-metrics and kwok's emulated kubelets.

These are the series the controller and the HPA comparison read on the reference box, so the
test asks for them by the labels a PromQL query there would use (``node="box"``).
"""

from __future__ import annotations

import psutil
import pytest

from ecrl.testbed import monitoring as mon

pytestmark = pytest.mark.e2e


def test_kube_state_metrics_series_for_the_gpu_node(monitoring: mon.Monitoring) -> None:
    result = mon.wait_for_series(
        monitoring.prom_url, 'kube_node_info{job="kube-state-metrics",node="box"}', 90
    )
    assert len(result) == 1
    # the GPU operator's advertised slots, as KSM exposes extended resources
    gpus = mon.wait_for_series(
        monitoring.prom_url,
        'kube_node_status_allocatable{node="box",resource="nvidia_com_gpu"}',
        30,
    )
    assert float(gpus[0]["value"][1]) == 4.0


def test_kubelet_resource_metrics_per_node(monitoring: mon.Monitoring) -> None:
    result = mon.wait_for_series(
        monitoring.prom_url, 'node_memory_working_set_bytes{job="kubelet-resource",node="box"}', 90
    )
    assert result[0]["metric"]["emulated"] == "true"
    assert result[0]["metric"]["instance"] == "box"


@pytest.mark.parametrize("which", ["prometheus", "ksm"])
def test_listens_on_loopback_only(monitoring: mon.Monitoring, which: str) -> None:
    proc = monitoring.prometheus if which == "prometheus" else monitoring.ksm
    listening = [
        c.laddr
        for c in psutil.Process(proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert len(listening) >= (1 if which == "prometheus" else 2)  # KSM: metrics + telemetry
    assert all(addr.ip == "127.0.0.1" for addr in listening), listening
