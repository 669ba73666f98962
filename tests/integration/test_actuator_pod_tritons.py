"""Triton config on every pod (the real cluster's path): two Triton endpoints — the data-plane
emulator speaking Triton's HTTP API — on two loopback addresses stand for two pod IPs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from ecrl import serving
from ecrl.testbed.procs import free_port
from services.scheduler_extender.actuator.apply import PodTritons, config_matches
from tests.integration.standalone import standalone_emulator

TARGET = {
    "max_batch_size": 16,
    "dynamic_batching": {"max_queue_delay_microseconds": 2000},
    "instance_group": [{"count": 2, "kind": "KIND_GPU"}],
}


def start(ip: str, port: int) -> contextlib.ExitStack:
    """One "pod": the emulator's Triton API on ``ip:port`` until the stack is closed."""
    stack = contextlib.ExitStack()
    stack.enter_context(standalone_emulator("--log-level", "warning", host=ip, http_port=port))
    return stack


def stop(pod: contextlib.ExitStack) -> None:
    pod.close()


def config(ip: str, port: int) -> dict:
    import tritonclient.http as th

    client = th.InferenceServerClient(f"{ip}:{port}")
    try:
        return client.get_model_config(serving.MODEL_NAME)
    finally:
        client.close()


@pytest.fixture
def pods() -> Iterator[dict]:
    port = free_port()  # the same port on both "pod IPs", as on a cluster
    procs = {"a": start("127.0.0.2", port), "b": start("127.0.0.3", port)}
    try:
        yield {"port": port, "procs": procs}
    finally:
        for proc in procs.values():
            stop(proc)


def test_load_reaches_every_pod_and_a_restarted_pod_is_brought_back(pods: dict) -> None:
    port = pods["port"]
    ready = [("pod-a", "127.0.0.2"), ("pod-b", "127.0.0.3")]
    tritons = PodTritons(lambda: list(ready), port)
    assert tritons.maintain() == []  # no target yet: nothing to converge
    assert not config_matches(config("127.0.0.2", port), TARGET)

    tritons.load(TARGET)
    assert config_matches(config("127.0.0.2", port), TARGET)
    assert config_matches(config("127.0.0.3", port), TARGET)
    assert tritons.maintain() == []  # both on target: no reload

    # pod b restarts: its container comes back with the repository's config.pbtxt
    stop(pods["procs"]["b"])
    pods["procs"]["b"] = start("127.0.0.3", port)
    assert not config_matches(config("127.0.0.3", port), TARGET)
    ops = tritons.maintain()
    assert [(o.op, o.outcome) for o in ops] == [("triton_config", "ok")]
    assert ops[0].detail.startswith("pod-b:")
    assert config_matches(config("127.0.0.3", port), TARGET)


def test_a_pod_that_cannot_be_loaded_is_named() -> None:
    tritons = PodTritons(lambda: [("gone", "127.0.0.4")], free_port(), timeout_s=1.0)
    with pytest.raises(RuntimeError, match="gone"):
        tritons.load(TARGET)
    (op,) = tritons.maintain()
    assert op.outcome == "error" and op.detail.startswith("gone:")
