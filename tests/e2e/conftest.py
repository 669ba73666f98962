"""The testbed fixture: a real control plane for the session, always torn down.

``make test`` builds the binaries first (``make testbed-build``: about 10 minutes cold on two
cores, seconds when cached) and sets ``ECRL_E2E=1``; a bare ``pytest`` skips these tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecrl.experiment.testbed_backend import TestbedEndpoints, load_baseline_config
from ecrl.filesd import write_sd
from ecrl.testbed import cluster, procs
from ecrl.testbed import dataplane as dp
from ecrl.testbed import monitoring as mon
from ecrl.testbed.procs import free_port

E2E = os.environ.get("ECRL_E2E") == "1"


@pytest.fixture(scope="session")
def testbed() -> Iterator[cluster.Testbed]:
    if not E2E:
        pytest.skip("set ECRL_E2E=1 to run against the real control plane (make testbed)")
    name = os.environ.get("ECRL_E2E_CLUSTER", "ecrl-e2e")  # another name: run sessions side by side
    try:
        yield cluster.up(name=name)
    finally:
        cluster.down(name)


@pytest.fixture(scope="module")
def monitoring(testbed: cluster.Testbed) -> Iterator[mon.Monitoring]:
    """Prometheus + kube-state-metrics against the session testbed, on free loopback ports.

    Module-scoped so each test module starts from an empty TSDB; the file_sd files in
    ``sd_dir`` are reset to no targets, so one module's emulator targets do not leak into the
    next. Yields :class:`ecrl.testbed.monitoring.Monitoring` (``prom_url``, ``sd_dir``, ...); the
    module is imported as ``mon`` here because this fixture takes its name.
    """
    sd = mon.sd_dir(testbed.name)
    for job in ("triton", "dcgm"):
        write_sd(sd, job, [])
    try:
        yield mon.up(
            testbed,
            prom_port=free_port(),
            ksm_port=free_port(),
            ksm_telemetry_port=free_port(),
        )
    finally:
        mon.down(testbed.name)


@pytest.fixture(scope="session")
def dataplane(testbed: cluster.Testbed) -> Iterator[dp.DataPlane]:
    """The data-plane emulator serving the session testbed's Deployment, on free ports."""
    plane = dp.start_emulator(
        testbed,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        usage_interval_s=2.0,
    )
    try:
        yield plane
    finally:
        procs.stop(testbed.name, "emulator")


BASELINE = Path(__file__).resolve().parents[2] / "deploy" / "baseline" / "mobilenetv4-triton.yaml"


@pytest.fixture
def deployment(testbed: cluster.Testbed, dataplane: dp.DataPlane) -> Iterator:
    """Apply the baseline Deployment without its HPA at N replicas and its initial Triton
    config; waits until the emulator serves them, and removes the Deployment (and waits for
    the emulator to let go) after."""

    def apply(replicas: int) -> None:
        testbed.kubectl("apply", "-f", str(BASELINE))
        testbed.kubectl("delete", "hpa", "mobilenetv4-triton", "--ignore-not-found")
        testbed.kubectl("scale", "deployment", "mobilenetv4-triton", f"--replicas={replicas}")
        dataplane.wait_pods(replicas, timeout_s=60)
        # the emulator outlives tests: back to the Deployment's Triton config, not the last one
        load_baseline_config(TestbedEndpoints(triton_http=dataplane.http_url))

    try:
        yield apply
    finally:
        testbed.kubectl("delete", "deployment", "mobilenetv4-triton", "--ignore-not-found")
        dataplane.wait_pods(0, timeout_s=60)


@pytest.fixture
def endpoints(dataplane: dp.DataPlane, monitoring: mon.Monitoring) -> TestbedEndpoints:
    """Where the session's data plane and this module's Prometheus answer, for the backends."""
    return TestbedEndpoints(
        prom_url=monitoring.prom_url,
        triton_http=dataplane.http_url,
        triton_grpc=dataplane.grpc_url,
        metrics_url=dataplane.metrics_url,
        emulator_time_scale=dataplane.time_scale,
    )
