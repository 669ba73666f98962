"""Each service image's ENTRYPOINT, ENV and HEALTHCHECK, run here as the container would run them.

No container engine is needed: the service starts from the Dockerfile's own ENTRYPOINT (+ CMD)
with the Dockerfile's ENV, on loopback ports instead of the image's (0.0.0.0:PORT ->
127.0.0.1:free port), and the HEALTHCHECK command must pass once it is up and fail once it is
gone. This catches a health probe that imports the wrong module, probes the wrong port or
endpoint, or an ENV the service does not read.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecrl.testbed.procs import free_port
from tests.unit.test_deploy_scripts import final_stage

pytest.importorskip("ecrl.v1.policy_pb2", reason="generated protobuf code missing: make proto")

REPO = Path(__file__).resolve().parents[2]
SERVICES = ["ecrl-policy-server", "ecrl-collector", "ecrl-scheduler-extender"]
DEADLINE_S = 60.0
KUBECONFIG_NOWHERE = """\
apiVersion: v1
kind: Config
clusters: [{name: nowhere, cluster: {server: "http://127.0.0.1:9"}}]
users: [{name: nobody, user: {}}]
contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody}}]
current-context: nowhere
"""
POLL_S = 0.25


def image_spec(name: str) -> tuple[list[str], dict[str, str], list[str]]:
    """The final stage's (ENTRYPOINT + CMD, ENV, HEALTHCHECK command) of deploy/docker/NAME."""
    final = final_stage(REPO / "deploy" / "docker" / f"{name}.Dockerfile")
    argv: list[str] = []
    env: dict[str, str] = {}
    health: list[str] = []
    for word, rest in final:
        if word in ("ENTRYPOINT", "CMD"):
            argv += json.loads(rest)
        elif word == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
        elif word == "HEALTHCHECK":
            health = json.loads(rest.split(" CMD ", 1)[1])
    return argv, env, health


def on_loopback(text: str, ports: dict[str, int]) -> str:
    """0.0.0.0:P or 127.0.0.1:P -> 127.0.0.1:<a free port, the same one for each P>."""

    def repl(m: re.Match[str]) -> str:
        return "127.0.0.1:" + str(ports.setdefault(m.group(1), free_port()))

    return re.sub(r"(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)", repl, text)


def probe(health: list[str], env: dict[str, str]) -> int:
    argv = [sys.executable if health[0] == "python" else health[0], *health[1:]]
    return subprocess.run(argv, env=env, capture_output=True, timeout=10, check=False).returncode


@pytest.mark.parametrize("name", SERVICES)
def test_healthcheck_passes_on_the_running_service_and_fails_once_it_stops(
    name: str, tmp_path: Path
) -> None:
    argv, image_env, health = image_spec(name)
    assert argv[:2] == ["python", "-m"] and health, name
    ports: dict[str, int] = {}
    env = {
        **os.environ,
        **{k: on_loopback(v, ports) for k, v in image_env.items() if k.startswith("ECRL_")},
        "PYTHONPATH": str(REPO),
        # Outside a cluster (the pod has in-cluster credentials): an apiserver that is not there.
        "KUBECONFIG": str(tmp_path / "kubeconfig"),
    }
    (tmp_path / "kubeconfig").write_text(KUBECONFIG_NOWHERE)
    # Port 9 is closed: the collector ticks without a Prometheus, the extender fails open
    # without an apiserver; both still answer their health endpoints.
    extra = ["--prometheus", "http://127.0.0.1:9"] if name == "ecrl-collector" else []
    cmd = [sys.executable, *[on_loopback(a, ports) for a in argv[1:]], *extra]
    log = (tmp_path / "service.log").open("w")
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while probe(health, env) != 0:
            assert proc.poll() is None, (tmp_path / "service.log").read_text()[-2000:]
            assert time.monotonic() < deadline, f"{name}: HEALTHCHECK never passed"
            time.sleep(POLL_S)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert probe(health, env) != 0, f"{name}: HEALTHCHECK passes with the service gone"
