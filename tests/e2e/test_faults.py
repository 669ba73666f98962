"""Fault tests on the testbed (``python -m ecrl.testbed.faults``): the controller under Locust
load when the policy server is SIGKILLed, Prometheus stops and the extender dies.

The promises (``FaultReport.problems``): the first tick after the kill falls back, a restarted
policy server is used again; with Prometheus gone the actuator holds ``hold_ticks`` ticks, then
falls back seeing no measurement (and changes no replica); a pod created while the extender is
dead is still bound; no pod is ever unschedulable and replicas stay in [min, max].
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from ecrl.testbed.faults import FaultPlan, run_faults

pytestmark = pytest.mark.e2e


def test_the_controller_survives_its_dependencies_dying(
    testbed, dataplane, monitoring, tmp_path: Path
) -> None:
    plan = FaultPlan(
        prom_port=urlparse(monitoring.prom_url).port,
        ksm_port=urlparse(monitoring.ksm_url).port,
        triton_http=dataplane.http_url,
        triton_grpc=dataplane.grpc_url,
        metrics_url=dataplane.metrics_url,
        time_scale=dataplane.time_scale,
        period_s=3.0,
    )
    try:
        report = run_faults(testbed, plan, tmp_path, log=print)
    finally:
        testbed.kubectl("delete", "deployment,hpa", "mobilenetv4-triton", "--ignore-not-found")
        dataplane.wait_pods(0, timeout_s=60)
    print("\n" + report.markdown())
    assert report.problems() == []
    assert report.policy_kill["ticks_after"] == 1  # the very next tick, not a later one
    assert report.prometheus_stop["replica_changes_while_stale"] == 0
    assert report.load["requests"] > 100
