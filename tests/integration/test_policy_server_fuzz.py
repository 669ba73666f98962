"""Fuzzing the policy server's gRPC inputs: thousands of random requests, zero crashes.

Random DecideRequest and ScoreNodesRequest contents (any lengths, NaN, ±inf, huge values,
random strings and names) and random raw bytes go over real gRPC to a real server. Every answer
must be OK (and then well-formed) or INVALID_ARGUMENT (or DEADLINE_EXCEEDED), never UNKNOWN or
INTERNAL, and the server must still answer a valid request afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("ecrl.v1.policy_pb2", reason="generated protobuf code missing: make proto")

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecrl.actions import HEADS, NVEC, OFFSETS
from ecrl.placement import NODE_SCHEMA_VERSION
from ecrl.policy_model import MASK_DIM, builtin_policy_path
from ecrl.schema import SCHEMA_HASH, SCHEMA_VERSION, STATE_DIM
from ecrl.v1 import policy_pb2, policy_pb2_grpc, state_pb2
from services.policy_server.config import ServerConfig
from services.policy_server.grpc_service import SERVICE_NAME
from services.policy_server.server import PolicyServer

pytestmark = pytest.mark.slow

ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED}
FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,  # reproducible in CI; the seed is the test's name
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""3 × 1000 + 500 (heuristic) examples: 3,500 requests per run."""


def serve(policy_path: str | None) -> Iterator[grpc.Channel]:
    config = ServerConfig(
        policy_path=policy_path,
        listen="127.0.0.1:0",
        metrics_listen=None,
        reload_interval_s=0,
    )
    with (
        PolicyServer(config) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield channel


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    """A server with the packaged learned policy."""
    yield from serve(builtin_policy_path())


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> policy_pb2_grpc.PolicyServiceStub:
    return policy_pb2_grpc.PolicyServiceStub(channel)


@pytest.fixture(scope="module")
def heuristic_stub() -> Iterator[policy_pb2_grpc.PolicyServiceStub]:
    """A server without a policy: the heuristic answers every Decide."""
    for channel in serve(None):
        yield policy_pb2_grpc.PolicyServiceStub(channel)


def call(rpc: Any, request: Any) -> Any:
    """The response, or None for an allowed error status; anything else fails the test."""
    try:
        return rpc(request, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, f"{exc.code()}: {exc.details()}"
        return None


# ------------------------------------------------------------------------------ strategies
def mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy:
    """``valid`` about four times in five, else ``other``: most requests get past one check."""
    return st.sampled_from((True, True, True, True, False)).flatmap(
        lambda ok: valid if ok else other
    )


any_float = st.floats(allow_nan=True, allow_infinity=True)
state_value = st.one_of(
    st.floats(-1e6, 1e6, width=32),
    st.sampled_from([0.0, 1.0, math.nan, math.inf, -math.inf, 1e30, -1e30, 3.4e38]),
    any_float,
)
values = mostly(
    st.lists(st.floats(-1e6, 1e6, width=32), min_size=STATE_DIM, max_size=STATE_DIM),
    st.one_of(
        st.lists(state_value, min_size=STATE_DIM, max_size=STATE_DIM),
        st.lists(state_value, max_size=3 * STATE_DIM),
    ),
)
masks = st.one_of(
    st.just([]),
    st.lists(st.booleans(), min_size=MASK_DIM, max_size=MASK_DIM),
    st.lists(st.booleans(), max_size=3 * MASK_DIM),
)
state_vectors = st.builds(
    state_pb2.StateVector,
    schema_version=mostly(st.just(SCHEMA_VERSION), st.one_of(st.just(""), st.text(max_size=40))),
    schema_hash=mostly(st.just(SCHEMA_HASH), st.text(max_size=40)),
    values=values,
    missing_inputs=st.lists(st.text(max_size=20), max_size=4),
    tick=st.integers(0, 2**64 - 1),
)
decide_requests = st.builds(policy_pb2.DecideRequest, state=state_vectors, action_mask=masks)

INT32 = st.integers(-(2**31), 2**31 - 1)
NODE_FIELDS = {
    "gpu_count": (st.integers(0, 8), INT32),
    "gpu_slots_total": (st.integers(1, 64), INT32),
    "gpu_slots_free": (st.integers(0, 64), INT32),
    "gpu_speed": (st.floats(0.1, 4), any_float),
    "vram_free_ratio": (st.floats(0, 1), any_float),
    "cpu_allocatable_cores": (st.floats(0.5, 256), any_float),
    "cpu_requested_cores": (st.floats(0, 256), any_float),
    "memory_allocatable_bytes": (st.floats(2**30, 2**40), any_float),
    "memory_requested_bytes": (st.floats(0, 2**40), any_float),
    "replicas": (st.integers(0, 16), INT32),
}
"""Per field: a value a cluster produces, and anything at all."""


@st.composite
def nodes(draw: st.DrawFn) -> policy_pb2.NodeState:
    """A plausible node, often with one field (or the optional utilization) gone wild."""
    wild = draw(st.one_of(st.none(), st.none(), st.sampled_from(sorted(NODE_FIELDS))))
    msg = policy_pb2.NodeState(
        name=draw(st.one_of(st.sampled_from(["a", "b", "c", "d", ""]), st.text(max_size=12))),
        **{name: draw(st.one_of(other if name == wild else valid))
           for name, (valid, other) in NODE_FIELDS.items()},
    )  # fmt: skip
    util = draw(st.one_of(st.none(), st.floats(0, 1), any_float))
    if util is not None:
        msg.gpu_util_ratio = util
    return msg


score_requests = st.builds(
    policy_pb2.ScoreNodesRequest,
    node_schema_version=mostly(st.just(NODE_SCHEMA_VERSION), st.text(max_size=20)),
    pod_cpu_cores=mostly(st.floats(0, 8), any_float),
    pod_memory_bytes=mostly(st.floats(0, 2**36), any_float),
    nodes=st.one_of(
        st.lists(nodes(), min_size=1, max_size=6, unique_by=lambda n: n.name),
        st.lists(nodes(), max_size=6),
    ),
)


# ---------------------------------------------------------------------------------- tests
def check_decide(stub: policy_pb2_grpc.PolicyServiceStub, request: Any) -> None:
    response = call(stub.Decide, request)
    if response is None:
        return
    mask = list(request.action_mask) or [True] * MASK_DIM
    assert len(response.action) == len(HEADS)
    for a, n, offset in zip(response.action, NVEC, OFFSETS, strict=True):
        assert 0 <= a < n and mask[offset + a]
    assert math.isfinite(response.value)


@FUZZ
@given(request=decide_requests)
def test_random_decide_requests_are_answered_or_refused_never_crash(stub, request):
    check_decide(stub, request)


@settings(FUZZ, max_examples=500)
@given(request=decide_requests)
def test_random_decide_requests_to_the_heuristic_are_answered_or_refused(heuristic_stub, request):
    check_decide(heuristic_stub, request)


@FUZZ
@given(request=score_requests)
def test_random_score_nodes_requests_are_answered_or_refused_never_crash(stub, request):
    response = call(stub.ScoreNodes, request)
    if response is None:
        return
    assert [s.name for s in response.scores] == [n.name for n in request.nodes]
    assert all(0 <= s.priority <= 10 and math.isfinite(s.score) for s in response.scores)


@FUZZ
@given(
    method=st.sampled_from(["Decide", "ScoreNodes", "GetPolicyInfo"]),
    payload=st.binary(max_size=512),
)
def test_random_bytes_are_answered_or_refused_never_crash(channel, method, payload):
    raw = channel.unary_unary(f"/{SERVICE_NAME}/{method}")  # bytes in, bytes out
    call(raw, payload)


def test_the_server_still_answers_a_valid_request_after_the_fuzzing(stub):
    """Runs last (file order): nothing the fuzzers sent broke the server."""
    state = state_pb2.StateVector(schema_hash=SCHEMA_HASH, values=[0.0] * STATE_DIM)
    response = stub.Decide(policy_pb2.DecideRequest(state=state), timeout=10)
    assert len(response.action) == len(HEADS)
    assert response.fallback_reason == policy_pb2.FALLBACK_REASON_UNSPECIFIED
