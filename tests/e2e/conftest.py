"""The testbed fixture: a real control plane for the session, always torn down.

``make test`` builds the binaries first (``make testbed-build``: about 10 minutes cold on two
cores, seconds when cached) and sets ``ECRL_E2E=1``; a bare ``pytest`` skips these tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ecrl.testbed import cluster

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
