"""The gRPC experiments every service process turns off must still exist in the locked grpcio.

``services/__init__.py`` sets ``GRPC_EXPERIMENTS`` (iomgr TCP endpoints instead of
EventEngine: BENCHMARKS.md, "Services"). gRPC core only logs "Unknown experiment" for a name
it does not know and carries on, so a grpcio upgrade that renames or drops one would silently
lose the speed; this test makes such an upgrade fail here instead.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("grpc")

import services

PROBE = """
import services, grpc, os
channel = grpc.insecure_channel("127.0.0.1:1")
try:
    grpc.channel_ready_future(channel).result(timeout=0.2)
except grpc.FutureTimeoutError:
    pass
channel.close()
print(os.environ["GRPC_EXPERIMENTS"])
"""


def _run(env_value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    env["GRPC_VERBOSITY"] = "ERROR"  # gRPC's default; "Unknown experiment" is an error line
    if env_value is not None:
        env["GRPC_EXPERIMENTS"] = env_value
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_services_set_only_experiments_the_installed_grpc_knows():
    probe = _run(None)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == services.GRPC_EXPERIMENTS
    assert "Unknown experiment" not in probe.stderr, probe.stderr


def test_the_probe_would_see_an_unknown_experiment():
    """The check above can fail: gRPC does report a name it does not know."""
    probe = _run("-no_such_experiment_for_ecrl")
    assert probe.returncode == 0, probe.stderr
    assert "Unknown experiment: no_such_experiment_for_ecrl" in probe.stderr


def test_a_users_own_setting_wins():
    probe = _run("-event_engine_client")
    assert probe.stdout.strip() == "-event_engine_client"
