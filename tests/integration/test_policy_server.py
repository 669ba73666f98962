"""The policy server over real gRPC on loopback: decisions, validation, reload, fallback, TLS.

Each test starts a real :class:`PolicyServer` on a free 127.0.0.1 port (``:0``) and talks to it
through the generated stubs, the health and reflection clients, and the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ecrl.v1.policy_pb2", reason="generated protobuf code missing: make proto")

import grpc
import onnx
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from ecrl.actions import HEADS, NVEC, OFFSETS
from ecrl.envelope import EnvelopeConfig, action_masks
from ecrl.placement import NODE_SCHEMA_VERSION, NodeState, PodRequest
from ecrl.policies.base import Observation, PodMetrics
from ecrl.policy_model import builtin_policy_path
from ecrl.schema import SCHEMA_HASH, SCHEMA_VERSION, STATE_DIM, encode
from ecrl.testbed import procs
from ecrl.twin.observe import observation
from ecrl.twin.profile import builtin_profile_path, load_profile
from ecrl.twin.spec import ClusterSpec
from ecrl.twin.twin import Twin
from ecrl.v1 import policy_pb2, policy_pb2_grpc, state_pb2
from services.policy_server import convert
from services.policy_server.client import (
    PolicyClient,
    PolicyUnavailable,
    TlsOptions,
)
from services.policy_server.config import ServerConfig
from services.policy_server.grpc_service import SERVICE_NAME
from services.policy_server.server import MethodAwarePool, PolicyServer, StartError

REPO = Path(__file__).resolve().parents[2]
BUILTIN_POLICY = Path(builtin_policy_path())
SCORER = REPO / "ecrl" / "models" / "placement.onnx"
POLL_S = 0.05
GIB = 2**30

pytestmark = pytest.mark.skipif(not BUILTIN_POLICY.is_file(), reason="no packaged policy")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def twin_state() -> tuple[np.ndarray, np.ndarray]:
    """A real state and envelope mask: the reference box after a minute of load."""
    tw = Twin(ClusterSpec(), load_profile(builtin_profile_path("rtx3080-mobilenetv4")), seed=0)
    for _ in range(60):
        tw.step(80.0)
    obs = observation(tw)
    return encode(obs), action_masks(obs, EnvelopeConfig())


ServerFactory = Callable[..., PolicyServer]


@pytest.fixture
def start_server() -> Iterator[ServerFactory]:
    """Start servers on free loopback ports; all are stopped at the end of the test."""
    servers: list[PolicyServer] = []

    def start(**overrides: Any) -> PolicyServer:
        fields: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "metrics_listen": "127.0.0.1:0",
            "reload_interval_s": POLL_S,
            "policy_path": str(BUILTIN_POLICY),
            "scorer_path": str(SCORER) if SCORER.is_file() else None,
        }
        fields.update(overrides)
        server = PolicyServer(ServerConfig(**fields))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace_s=0.2)


@pytest.fixture(scope="module")
def server() -> Iterator[PolicyServer]:
    """One server with the packaged models for the tests that only read (faster)."""
    config = ServerConfig(
        policy_path=str(BUILTIN_POLICY),
        scorer_path=str(SCORER) if SCORER.is_file() else None,
        listen="127.0.0.1:0",
        metrics_listen=None,
        reload_interval_s=0,
    )
    with PolicyServer(config) as srv:
        yield srv


def channel_to(server: PolicyServer) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{server.port}")


@pytest.fixture(scope="module")
def stub(server: PolicyServer) -> Iterator[policy_pb2_grpc.PolicyServiceStub]:
    with channel_to(server) as channel:
        yield policy_pb2_grpc.PolicyServiceStub(channel)


def decide_request(
    values: Any, mask: Any = (), schema_hash: str = SCHEMA_HASH
) -> policy_pb2.DecideRequest:
    state = state_pb2.StateVector(
        schema_version=SCHEMA_VERSION, schema_hash=schema_hash, values=list(values)
    )
    return policy_pb2.DecideRequest(state=state, action_mask=[bool(m) for m in mask])


def status_of(call: Callable[[], Any]) -> tuple[Any, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


wait_until = partial(procs.wait_until, timeout_s=10.0, every_s=0.02)
"""The testbed's bounded poll, tight: the server reloads and answers within milliseconds."""


def restamped_copy(src: Path, dest: Path, **metadata: str) -> Path:
    """A copy of an ONNX policy with some ``ecrl.*`` metadata values replaced."""
    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key in metadata:
            prop.value = metadata[prop.key]
    known = {p.key for p in proto.metadata_props}
    for key, value in metadata.items():
        if key not in known:
            proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(dest))
    return dest


def metrics_of(server: PolicyServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def assert_valid_action(response: policy_pb2.DecideResponse, mask: np.ndarray) -> None:
    assert list(response.heads) == [h.name for h in HEADS]
    assert len(response.action) == len(HEADS)
    for a, n, offset in zip(response.action, NVEC, OFFSETS, strict=True):
        assert 0 <= a < n
        assert mask[offset + a], "the chosen step must be allowed by the mask"


# ------------------------------------------------------------------------------ Decide
def test_decide_with_the_builtin_policy_returns_an_allowed_action_for_a_twin_state(
    stub, twin_state
):
    values, mask = twin_state
    response = stub.Decide(decide_request(values, mask), timeout=5)
    assert_valid_action(response, mask)
    assert response.fallback_reason == policy_pb2.FALLBACK_REASON_UNSPECIFIED
    sha = hashlib.sha256(BUILTIN_POLICY.read_bytes()).hexdigest()
    assert response.policy_version == sha[:12]
    assert np.isfinite(response.value)


def test_decide_with_an_empty_mask_allows_every_step(stub, twin_state):
    values, _ = twin_state
    response = stub.Decide(decide_request(values), timeout=5)
    assert_valid_action(response, np.ones(sum(NVEC), dtype=bool))


@pytest.mark.parametrize(
    ("values", "mask", "schema_hash", "expected"),
    [
        ([0.0] * (STATE_DIM - 1), (), SCHEMA_HASH, f"length {STATE_DIM - 1}, expected {STATE_DIM}"),
        ([0.0] * (STATE_DIM + 3), (), SCHEMA_HASH, "state.values: length"),
        ([float("nan")] + [0.0] * (STATE_DIM - 1), (), SCHEMA_HASH, "state.values[0]"),
        ([0.0] * 5 + [float("inf")] + [0.0] * 30, (), SCHEMA_HASH, "state.values[5]"),
        ([0.0] * 5 + [-float("inf")] + [0.0] * 30, (), SCHEMA_HASH, "not finite"),
        ([0.0] * STATE_DIM, (), "0123456789abcdef", f"expected {SCHEMA_HASH}"),
        ([0.0] * STATE_DIM, (), "", "state.schema_hash"),
        ([0.0] * STATE_DIM, [True] * 7, SCHEMA_HASH, f"length 7, expected {sum(NVEC)}"),
        ([0.0] * STATE_DIM, [False] * 5 + [True] * 12, SCHEMA_HASH, "head 'replicas'"),
    ],
    ids=[
        "too-short",
        "too-long",
        "nan",
        "inf",
        "minus-inf",
        "wrong-schema-hash",
        "no-schema-hash",
        "mask-wrong-length",
        "mask-head-without-step",
    ],
)
def test_decide_refuses_bad_input_with_invalid_argument_naming_the_field(
    stub, values, mask, schema_hash, expected
):
    code, details = status_of(
        lambda: stub.Decide(decide_request(values, mask, schema_hash), timeout=5)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in details


def test_a_malformed_request_message_is_invalid_argument_not_internal(server):
    with channel_to(server) as channel:
        raw = channel.unary_unary(f"/{SERVICE_NAME}/Decide")  # bytes in, bytes out
        code, details = status_of(lambda: raw(b"\x0a\x03\x12\x01\xff", timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "DecideRequest" in details


# -------------------------------------------------------------------------- ScoreNodes
def node(name: str, **changes: Any) -> policy_pb2.NodeState:
    fields: dict[str, Any] = {
        "name": name,
        "gpu_count": 1,
        "gpu_slots_total": 4,
        "gpu_slots_free": 2,
        "gpu_speed": 1.0,
        "vram_free_ratio": 0.5,
        "cpu_allocatable_cores": 8.0,
        "cpu_requested_cores": 2.0,
        "memory_allocatable_bytes": 32.0 * GIB,
        "memory_requested_bytes": 4.0 * GIB,
        "replicas": 1,
    }
    fields.update(changes)
    return policy_pb2.NodeState(**fields)


def score_request(nodes: list[Any], version: str = NODE_SCHEMA_VERSION, cpu: float = 1.0):
    return policy_pb2.ScoreNodesRequest(
        node_schema_version=version, pod_cpu_cores=cpu, pod_memory_bytes=GIB, nodes=nodes
    )


def test_score_nodes_returns_one_priority_in_0_to_10_per_node_in_order(stub, server):
    nodes = [node("busy", gpu_slots_free=0, replicas=4), node("idle", gpu_slots_free=4)]
    response = stub.ScoreNodes(score_request(nodes), timeout=5)
    assert [s.name for s in response.scores] == ["busy", "idle"]
    assert all(0 <= s.priority <= 10 for s in response.scores)
    assert max(s.priority for s in response.scores) == 10
    if server.store.scorer.current.model is not None:
        assert response.scorer_version == server.store.scorer.current.version
        assert response.fallback_reason == policy_pb2.FALLBACK_REASON_UNSPECIFIED


def test_score_nodes_without_a_scorer_falls_back_to_the_default_scheduler(start_server):
    srv = start_server(scorer_path=None)
    with channel_to(srv) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        response = stub.ScoreNodes(score_request([node("a"), node("b", cpu_requested_cores=6)]))
    assert response.scorer_version == "kube-default"
    assert response.fallback_reason == policy_pb2.FALLBACK_REASON_NO_MODEL
    assert [s.priority for s in response.scores] == [10, 0]


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (score_request([]), "at least one candidate"),
        (score_request([node("a")], version="ecrl.node/v0"), "node_schema_version"),
        (score_request([node("a"), node("a")]), "appears twice"),
        (score_request([node("")]), "nodes[0].name"),
        (score_request([node("a", cpu_allocatable_cores=-1.0)]), "cpu_allocatable_cores"),
        (score_request([node("a", gpu_speed=float("nan"))]), "gpu_speed"),
        (score_request([node("a", memory_requested_bytes=float("inf"))]), "memory_requested"),
        (score_request([node("a", gpu_util_ratio=float("nan"))]), "gpu_util_ratio"),
        (score_request([node("a", gpu_slots_free=-1)]), "gpu_slots_free"),
        (score_request([node("a")], cpu=float("nan")), "pod.cpu_cores"),
    ],
    ids=[
        "no-nodes",
        "node-schema",
        "duplicate",
        "empty-name",
        "negative",
        "nan",
        "inf",
        "nan-optional",
        "negative-count",
        "pod-nan",
    ],
)
def test_score_nodes_refuses_bad_input_with_invalid_argument(stub, request_, expected):
    code, details = status_of(lambda: stub.ScoreNodes(request_, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in details


# ---------------------------------------------------------------- schema and fallback
def test_a_schema_mismatched_policy_is_refused_and_the_heuristic_answers(
    start_server, tmp_path, twin_state
):
    bad = restamped_copy(BUILTIN_POLICY, tmp_path / "old.onnx", **{"ecrl.schema_hash": "f" * 16})
    srv = start_server(policy_path=str(bad))
    with channel_to(srv) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        info = stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=5)
        values, mask = twin_state
        response = stub.Decide(decide_request(values, mask), timeout=5)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
        )
    assert info.fallback_reason == policy_pb2.FALLBACK_REASON_SCHEMA_MISMATCH
    assert "f" * 16 in info.fallback_detail and SCHEMA_HASH in info.fallback_detail
    assert "retrain" in info.fallback_detail
    assert info.policy_version == ""
    assert response.policy_version == "heuristic"
    assert response.fallback_reason == policy_pb2.FALLBACK_REASON_SCHEMA_MISMATCH
    assert_valid_action(response, mask)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    m = metrics_of(srv)
    assert m[("ecrl_policy_fallback", (("component", "policy"), ("reason", "schema_mismatch")))]
    key = ("ecrl_policy_reloads_total", (("component", "policy"), ("outcome", "schema_mismatch")))
    assert m[key] == 1


def test_no_model_at_all_is_fallback_in_info_metrics_and_health_still_serving(
    start_server, tmp_path, twin_state
):
    srv = start_server(policy_path=str(tmp_path / "absent.onnx"))
    with channel_to(srv) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        info = stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=5)
        values, mask = twin_state
        response = stub.Decide(decide_request(values, mask), timeout=5)
        health = health_pb2_grpc.HealthStub(channel)
        overall = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert info.fallback_reason == policy_pb2.FALLBACK_REASON_NO_MODEL
    assert "absent.onnx" in info.fallback_detail
    assert response.fallback_reason == policy_pb2.FALLBACK_REASON_NO_MODEL
    assert_valid_action(response, mask)
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    m = metrics_of(srv)
    assert m[("ecrl_policy_fallback", (("component", "policy"), ("reason", "no_model")))] == 1
    key = ("ecrl_policy_fallback_decisions_total", (("reason", "no_model"), ("rpc", "Decide")))
    assert m[key] == 1


def busy_state(cpu_usage_cores: float, pending: int = 0) -> np.ndarray:
    """Two ready pods at ``cpu_usage_cores`` each (request 1 core), plus pending ones."""
    pods = [
        PodMetrics(f"p{i}", True, 0.0, 30.0, cpu_usage_cores, memory_usage_bytes=GIB / 2)
        for i in range(2)
    ] + [PodMetrics(f"q{i}", False, 500.0, None, None) for i in range(pending)]
    obs = Observation(
        time_s=600.0,
        pods=tuple(pods),
        desired_replicas=2 + pending,
        min_replicas=1,
        max_replicas=8,
        cpu_request_cores=1.0,
        cpu_limit_cores=2.0,
        memory_request_bytes=2 * GIB,
        memory_limit_bytes=4 * GIB,
        max_batch_size=8,
        batch_delay_s=0.0,
        instance_count=1,
        request_rate_rps=50.0,
        p95_latency_s=0.05,
        success_ratio=1.0,
        gpu_util_ratio=0.5,
        vram_used_bytes=2.0 * GIB,
        free_gpu_slots=4,
        slo_p95_s=0.1,
    )
    return encode(obs)


REPLICAS = HEADS[0]


@pytest.mark.parametrize(
    ("cpu", "pending", "allowed_steps", "expected_step"),
    [
        (1.6, 0, None, 2),  # usage 160 % of request vs 80 % target → 4 pods: +2
        (1.6, 0, {-1, 0, 1}, 1),  # the mask caps the step
        (1.6, 0, {-2, -1, 0}, 0),  # up forbidden: hold, never the opposite direction
        (0.84, 0, None, 0),  # 105 % of target: inside the 10 % tolerance
        (0.2, 0, None, -1),  # 25 % of target → ceil(0.5) = 1 pod: −1
        (0.2, 0, {0, 1, 2}, 0),  # scale-down in cool-down: hold
        (1.0, 2, None, 0),  # 125 % but two pods starting count as 0 % → 62 %: hold
    ],
)
def test_without_a_policy_the_heuristic_follows_the_hpa_rule_within_the_mask(
    start_server, cpu, pending, allowed_steps, expected_step
):
    srv = start_server(policy_path=None)
    mask = np.ones(sum(NVEC), dtype=bool)
    if allowed_steps is not None:
        for i, step in enumerate(REPLICAS.steps):
            mask[OFFSETS[0] + i] = step in allowed_steps
    with PolicyClient(f"127.0.0.1:{srv.port}", timeout_s=5) as client:
        decision = client.decide(busy_state(cpu, pending), mask)
    assert decision.policy_version == "heuristic"
    assert REPLICAS.steps[decision.action[0]] == expected_step
    assert all(a == h.noop for a, h in zip(decision.action[1:], HEADS[1:], strict=True))


def test_the_policy_is_picked_up_when_its_file_appears_later(start_server, tmp_path):
    path = tmp_path / "policy.onnx"
    srv = start_server(policy_path=str(path))
    client = PolicyClient(f"127.0.0.1:{srv.port}", timeout_s=5)
    assert client.info().policy_version == ""
    shutil.copyfile(BUILTIN_POLICY, path)
    wait_until("a policy loaded", lambda: client.info().policy_version != "")
    assert client.info().fallback.value == ""
    client.close()


def test_a_scorer_for_other_node_features_is_refused_and_kube_default_scores(
    start_server, tmp_path
):
    if not SCORER.is_file():
        pytest.skip("no packaged node scorer")
    bad = tmp_path / "placement.onnx"
    proto = onnx.load(str(SCORER))
    for prop in proto.metadata_props:
        if prop.key == "node_schema_hash":
            prop.value = "0" * 16
    onnx.save(proto, str(bad))
    srv = start_server(scorer_path=str(bad))
    with channel_to(srv) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        response = stub.ScoreNodes(score_request([node("a"), node("b")]), timeout=5)
        info = stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=5)
    assert response.scorer_version == "kube-default"
    assert response.fallback_reason == policy_pb2.FALLBACK_REASON_SCHEMA_MISMATCH
    assert info.scorer_version == "kube-default"
    assert "scorer:" in info.fallback_detail and "0" * 16 in info.fallback_detail
    assert info.fallback_reason == policy_pb2.FALLBACK_REASON_UNSPECIFIED  # the policy is fine


class BrokenModel:
    """Stands in for a loaded policy whose graph fails at run time."""

    def decide_raw(self, states: Any, masks: Any) -> Any:
        raise RuntimeError("onnxruntime: kernel failed")


def test_a_policy_failing_on_a_request_is_answered_by_the_heuristic(start_server, twin_state):
    srv = start_server(reload_interval_s=0)
    watched = srv.store.policy
    watched.current = dataclasses.replace(watched.current, model=BrokenModel())
    values, mask = twin_state
    with PolicyClient(f"127.0.0.1:{srv.port}", timeout_s=5) as client:
        decision = client.decide(values, mask)
    assert decision.policy_version == "heuristic"
    assert decision.fallback.value == "model_error"
    m = metrics_of(srv)
    key = ("ecrl_policy_fallback_decisions_total", (("reason", "model_error"), ("rpc", "Decide")))
    assert m[key] == 1


def test_concurrent_decides_are_batched_and_each_gets_its_own_answer(start_server, twin_state):
    """Bursts of 64 calls in flight on one channel: each answer equals the one the same
    request gets alone, a bad request in the burst is refused alone, and the server runs the
    policy graph for several requests at once. Whether a burst's requests meet in one loop
    turn depends on timing (a starved client, here in the server's own process, sends them one by one), so up to
    ``max_bursts`` bursts are sent until the batch-size histogram shows a shared run."""
    max_bursts = 20  # one burst takes ~0.1 s
    srv = start_server(reload_interval_s=0)
    values, mask = twin_state
    rng = np.random.default_rng(7)
    states = [np.clip(values + rng.normal(0, 0.3, len(values)), -5, 5) for _ in range(63)]
    bad = [float("nan")] * STATE_DIM
    target = f"127.0.0.1:{srv.port}"
    with grpc.insecure_channel(target) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        alone = [stub.Decide(decide_request(s, mask), timeout=5) for s in states]

    def batch_counts() -> tuple[float, float]:
        m = metrics_of(srv)
        key = "ecrl_policy_decide_batch_size"
        return m[(f"{key}_count", ())], m[(f"{key}_sum", ())]

    async def burst(aio_stub: policy_pb2_grpc.PolicyServiceStub) -> list[Any]:
        calls = [aio_stub.Decide(decide_request(s, mask), timeout=10) for s in states]
        calls.insert(31, aio_stub.Decide(decide_request(bad, mask), timeout=10))
        return await asyncio.gather(*calls, return_exceptions=True)

    async def bursts() -> int:
        async with grpc.aio.insecure_channel(target) as channel:
            aio_stub = policy_pb2_grpc.PolicyServiceStub(channel)
            await aio_stub.Decide(decide_request(values, mask), timeout=10)  # connected
            for sent in range(1, max_bursts + 1):
                runs_before, decided_before = batch_counts()
                answers = await burst(aio_stub)
                refused = answers.pop(31)
                assert isinstance(refused, grpc.aio.AioRpcError)
                assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "state.values[0]" in refused.details()
                for one, together in zip(alone, answers, strict=True):
                    assert not isinstance(together, BaseException), together
                    assert list(together.action) == list(one.action)
                    assert together.value == pytest.approx(one.value, rel=1e-5, abs=1e-6)
                    assert together.fallback_reason == policy_pb2.FALLBACK_REASON_UNSPECIFIED
                runs, decided = batch_counts()
                assert decided - decided_before == 63  # each valid request once, the bad never
                if runs - runs_before < 63:  # some run of the graph decided several requests
                    return sent
        return 0

    assert asyncio.run(bursts()) > 0, f"no shared graph run in {max_bursts} bursts of 64"


# -------------------------------------------------------------------------- hot reload
@pytest.mark.slow
def test_hot_reload_swaps_the_policy_with_zero_failed_requests(start_server, tmp_path, twin_state):
    path = tmp_path / "policy.onnx"
    shutil.copyfile(BUILTIN_POLICY, path)
    srv = start_server(policy_path=str(path))
    version_a = srv.store.policy.current.version
    new = restamped_copy(BUILTIN_POLICY, tmp_path / "b.onnx", **{"ecrl.retrained": "b"})
    values, mask = twin_state
    stop = threading.Event()
    seen: list[str] = []
    failures: list[BaseException] = []

    def hammer() -> None:
        with channel_to(srv) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            while not stop.is_set():
                try:
                    r = stub.Decide(decide_request(values, mask), timeout=5)
                    assert r.fallback_reason == policy_pb2.FALLBACK_REASON_UNSPECIFIED
                    seen.append(r.policy_version)
                except BaseException as exc:
                    failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until("50 decisions", lambda: len(seen) > 50)
    shutil.copyfile(new, path)  # in place, not atomic: the watcher must cope
    wait_until("a decision by the new policy", lambda: seen[-1] != version_a)
    n_after = len(seen)
    wait_until("50 more decisions", lambda: len(seen) > n_after + 50)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    version_b = srv.store.policy.current.version
    assert version_b != version_a
    assert set(seen) == {version_a, version_b}
    assert seen.index(version_b) > 0


def test_a_corrupt_replacement_keeps_the_old_policy_serving(start_server, tmp_path, twin_state):
    path = tmp_path / "policy.onnx"
    shutil.copyfile(BUILTIN_POLICY, path)
    srv = start_server(policy_path=str(path))
    version = srv.store.policy.current.version
    path.write_bytes(b"this is not an onnx graph")
    client = PolicyClient(f"127.0.0.1:{srv.port}", timeout_s=5)
    wait_until("a reload refused", lambda: "reload refused" in client.info().fallback_detail)
    info = client.info()
    assert info.policy_version == version
    assert info.fallback.value == ""
    assert f"still serving {version}" in info.fallback_detail
    values, mask = twin_state
    decision = client.decide(values, mask)
    assert decision.policy_version == version
    m = metrics_of(srv)
    assert m[("ecrl_policy_reloads_total", (("component", "policy"), ("outcome", "invalid")))] == 1
    # putting the good file back clears the report
    shutil.copyfile(BUILTIN_POLICY, path)
    wait_until("the report cleared", lambda: client.info().fallback_detail == "")
    client.close()


def test_a_schema_mismatched_replacement_keeps_the_old_policy_serving(start_server, tmp_path):
    path = tmp_path / "policy.onnx"
    shutil.copyfile(BUILTIN_POLICY, path)
    srv = start_server(policy_path=str(path))
    version = srv.store.policy.current.version
    bad = restamped_copy(BUILTIN_POLICY, tmp_path / "bad.onnx", **{"ecrl.schema_hash": "0" * 16})
    os.replace(bad, path)
    client = PolicyClient(f"127.0.0.1:{srv.port}", timeout_s=5)
    wait_until("a reload refused", lambda: "reload refused" in client.info().fallback_detail)
    info = client.info()
    assert info.policy_version == version and info.fallback.value == ""
    assert "0" * 16 in info.fallback_detail
    client.close()


# --------------------------------------------------------------------------- deadlines
def test_a_tiny_deadline_gets_deadline_exceeded_not_a_hang(stub, twin_state):
    values, mask = twin_state
    start = time.monotonic()
    code, _ = status_of(lambda: stub.Decide(decide_request(values, mask), timeout=1e-4))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 2.0


def test_the_server_refuses_at_once_when_the_deadline_is_shorter_than_the_work(
    start_server, twin_state
):
    srv = start_server(deadline_margin_s=0.5)  # pretend a decision needs half a second
    values, mask = twin_state
    with channel_to(srv) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=5)  # connect first
        start = time.monotonic()
        code, details = status_of(lambda: stub.Decide(decide_request(values, mask), timeout=0.3))
        elapsed = time.monotonic() - start
        assert stub.Decide(decide_request(values, mask), timeout=5).action  # long one works
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "not started" in details  # the server's answer, not the client's own timer
    assert elapsed < 0.25


def test_the_client_raises_policy_unavailable_when_nothing_listens():
    client = PolicyClient("127.0.0.1:1", timeout_s=0.5)
    with pytest.raises(PolicyUnavailable):
        client.decide([0.0] * STATE_DIM)
    assert client.serving() is False
    client.close()


# ---------------------------------------------------------------- health, reflection
def test_health_reports_serving_then_not_serving_on_shutdown(start_server):
    srv = start_server()
    with channel_to(srv) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=srv.stop, kwargs={"grace_s": 0.3})
        stopper.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stopper.join()


def test_reflection_lists_the_policy_service_and_its_methods(server):
    with channel_to(server) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        pool = DescriptorPool(db)
        methods = {m.name for m in pool.FindServiceByName(SERVICE_NAME).methods}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
    assert methods == {"Decide", "ScoreNodes", "GetPolicyInfo"}


def test_reflection_resolves_method_symbols_like_grpcurl_describe_and_ghz(server):
    with channel_to(server) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        for symbol in (f"{SERVICE_NAME}.Decide", "grpc.health.v1.Health.Check"):
            assert db.FindFileContainingSymbol(symbol).name.endswith(".proto")
    pool = MethodAwarePool()
    for unknown in (f"{SERVICE_NAME}.NoSuchMethod", "ecrl.v1.NoSuchService.Decide"):
        with pytest.raises(KeyError):
            pool.FindFileContainingSymbol(unknown)


def test_get_policy_info_describes_the_loaded_models(stub, server):
    info = stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=5)
    assert info.schema_version == SCHEMA_VERSION and info.schema_hash == SCHEMA_HASH
    assert info.policy_version == server.store.policy.current.version != ""
    assert info.policy_path == str(BUILTIN_POLICY)
    assert info.fallback_reason == policy_pb2.FALLBACK_REASON_UNSPECIFIED
    assert info.node_schema_version == NODE_SCHEMA_VERSION
    assert list(info.heads) == [h.name for h in HEADS]
    assert list(info.head_sizes) == list(NVEC)


# ----------------------------------------------------------------------------- metrics
def test_metrics_expose_the_decision_latency_histogram_after_requests(start_server, twin_state):
    server = start_server()
    values, mask = twin_state
    channel = channel_to(server)
    stub = policy_pb2_grpc.PolicyServiceStub(channel)
    for _ in range(5):
        stub.Decide(decide_request(values, mask), timeout=5)
    status_of(lambda: stub.Decide(decide_request([0.0]), timeout=5))
    channel.close()
    m = metrics_of(server)
    count = ("ecrl_policy_decision_seconds_count", (("outcome", "model"), ("rpc", "Decide")))
    assert m[count] == 5
    assert m[("ecrl_policy_requests_total", (("code", "OK"), ("rpc", "Decide")))] == 5
    invalid = ("ecrl_policy_requests_total", (("code", "INVALID_ARGUMENT"), ("rpc", "Decide")))
    assert m[invalid] == 1
    version = server.store.policy.current.version
    info = (
        "ecrl_policy_model_info",
        (("component", "policy"), ("schema_hash", SCHEMA_HASH), ("version", version)),
    )
    assert m[info] == 1


# --------------------------------------------------------------------------- TLS, mTLS
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("no `openssl` CLI and no `cryptography` package to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=ecrl-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text("basicConstraints=CA:FALSE\n" + ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=ecrl-{name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "1",
                 "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(start_server, pki):
    srv = start_server(tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"))
    with PolicyClient(
        f"127.0.0.1:{srv.port}", timeout_s=5, tls=TlsOptions(str(pki / "ca.pem"))
    ) as client:
        assert client.info().schema_hash == SCHEMA_HASH
    with (
        PolicyClient(f"127.0.0.1:{srv.port}", timeout_s=2) as plaintext,
        pytest.raises(PolicyUnavailable),
    ):
        plaintext.info()


def test_mutual_tls_refuses_a_client_without_a_certificate(start_server, pki):
    srv = start_server(
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_client_ca=str(pki / "ca.pem"),
    )
    target = f"127.0.0.1:{srv.port}"
    with_cert = TlsOptions(str(pki / "ca.pem"), str(pki / "client.pem"), str(pki / "client.key"))
    with PolicyClient(target, timeout_s=5, tls=with_cert) as client:
        assert client.decide([0.0] * STATE_DIM).action
    with PolicyClient(target, timeout_s=2, tls=TlsOptions(str(pki / "ca.pem"))) as anonymous:
        with pytest.raises(PolicyUnavailable):
            anonymous.info()
        assert anonymous.serving() is False


# -------------------------------------------------------------------- client round trip
def test_client_score_nodes_round_trips_plain_node_states(server):
    nodes = [
        NodeState("a", 1, 4, 0, 1.0, 0.9, 0.1, 8.0, 6.0, 32.0 * GIB, 20.0 * GIB, 4),
        NodeState("b", 1, 4, 4, 1.0, None, 0.9, 8.0, 1.0, 32.0 * GIB, 2.0 * GIB, 0),
    ]
    with PolicyClient(f"127.0.0.1:{server.port}", timeout_s=5) as client:
        scores = client.score_nodes(nodes, PodRequest(1.0, GIB))
    assert scores.names == ("a", "b")
    assert all(0 <= p <= 10 for p in scores.priorities)
    assert convert.node_state(convert.node_message(nodes[1])) == nodes[1]


# ------------------------------------------------------------------------- the process
@pytest.mark.parametrize("taken", ["listen", "metrics_listen"])
def test_a_taken_port_is_a_start_error_and_leaves_no_thread_behind(taken):
    before = {t.ident for t in threading.enumerate()}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        fields = {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", taken: address}
        server = PolicyServer(ServerConfig(**fields, reload_interval_s=0))
        with pytest.raises(StartError, match=f"--{taken.replace('_', '-')} {address}: cannot bind"):
            server.start()
    assert {t.ident for t in threading.enumerate()} <= before  # the event loop thread ended


def test_help_lists_every_flag_with_examples():
    out = subprocess.run(
        [sys.executable, "-m", "services.policy_server", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for flag in ("--policy", "--scorer", "--listen", "--metrics-listen", "--reload-interval",
                 "--tls-cert", "--tls-key", "--tls-client-ca", "--max-concurrent-rpcs", "--log-level"):  # fmt: skip
        assert flag in out
    assert "examples:" in out


def test_bad_configuration_is_one_line_naming_the_flag_and_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "services.policy_server", "--tls-cert", "/nonexistent.pem"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "--tls-key" in proc.stderr


@pytest.mark.slow
def test_the_process_logs_json_serves_and_stops_cleanly_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.policy_server", "--listen", "127.0.0.1:0",
         "--metrics-listen", "127.0.0.1:0", "--grace", "1"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        started = None
        deadline = time.monotonic() + 60
        while started is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            event = json.loads(line)
            assert event["service"] == "policy-server"
            if event["msg"] == "policy server started":
                started = event
        assert started is not None, "the server did not log its start"
        assert started["fallback"] == ""
        with PolicyClient(f"127.0.0.1:{started['port']}", timeout_s=5) as client:
            assert client.serving()
            assert client.decide([0.0] * STATE_DIM).policy_version == started["policy_version"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
