"""The testbed fixture: a real control plane for the session, always torn down.

``make test`` builds the binaries first (``make testbed-build``: about 10 minutes cold on two
cores, seconds when cached) and sets ``ECRL_E2E=1``; a bare ``pytest`` skips these tests.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from ecrl.testbed import cluster
from ecrl.testbed import monitoring as mon

E2E = os.environ.get("ECRL_E2E") == "1"


@pytest.fixture(scope="session")
def testbed() -> Iterator[cluster.Testbed]:
    if not E2E:
        pytest.skip("set ECRL_E2E=1 to run against the real control plane (make testbed)")
    name = "ecrl-e2e"
    try:
        yield cluster.up(name=name)
    finally:
        cluster.down(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        mon.write_sd(sd, job, [])
    try:
        yield mon.up(
            testbed,
            prom_port=_free_port(),
            ksm_port=_free_port(),
            ksm_telemetry_port=_free_port(),
        )
    finally:
        mon.down(testbed.name)
