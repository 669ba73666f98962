"""The policy server's columnar ScoreNodes gives exactly the per-node answer.

Random candidate lists — ordinary ones and every kind of value the per-node code refuses or
treats specially (missing or non-finite GPU utilization, zero or huge allocatable, counts
below zero, empty and duplicate names, an unknown schema) — are scored both ways: the same
scores, priorities, version and fallback, or the same InvalidRequest message.
"""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

pytest.importorskip("ecrl.v1.policy_pb2", reason="generated protobuf code missing: make proto")

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecrl.errors import InvalidRequest
from ecrl.placement import (
    NODE_SCHEMA_VERSION,
    NodeColumns,
    NodeState,
    PodRequest,
    node_features,
    node_features_columns,
)
from services.policy_server import convert
from services.policy_server.config import ServerConfig
from services.policy_server.server import PolicyServer

GIB = 2.0**30
EQUAL = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def core(scorer: bool):
    server = PolicyServer(
        ServerConfig(
            listen="127.0.0.1:0",
            metrics_listen=None,
            reload_interval_s=0,
            **({} if scorer else {"scorer_path": None}),
        )
    )
    server.store.poll()
    assert (server.store.scorer.current.model is not None) is scorer
    return server.core


CORES = {"learned": core(True), "kube-default": core(False)}

odd_float = st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e300, 2.0**60 + 1])
ODD: dict[str, list] = {
    "name": ["", "dup"],
    "gpu_count": [0, -1],
    "gpu_slots_total": [0, -1],
    "gpu_slots_free": [-1, 99],
    "gpu_util_ratio": [None, float("nan"), -0.5, 2e3],
    "replicas": [-1, 10**6],
}
"""Per field, values the per-node code refuses or treats specially (floats: odd_float)."""


@st.composite
def node(draw, i: int) -> NodeState:
    total = draw(st.integers(1, 16))
    return NodeState(
        name=f"n{i}",
        gpu_count=draw(st.integers(1, 2)),
        gpu_slots_total=total,
        gpu_slots_free=draw(st.integers(0, total)),
        gpu_speed=draw(st.floats(0.25, 4.0)),
        gpu_util_ratio=draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
        vram_free_ratio=draw(st.floats(0.0, 1.0)),
        cpu_allocatable_cores=draw(st.floats(0.1, 64.0)),
        cpu_requested_cores=draw(st.floats(0.0, 64.0)),
        memory_allocatable_bytes=draw(st.floats(GIB, 256 * GIB)),
        memory_requested_bytes=draw(st.floats(0.0, 256 * GIB)),
        replicas=draw(st.integers(0, 100)),
    )


@st.composite
def candidates(draw) -> list[NodeState]:
    """Ordinary nodes; in about half the lists one field of one node is made odd."""
    nodes = [draw(node(i)) for i in range(draw(st.integers(0, 12)))]
    if nodes and draw(st.booleans()):
        k = draw(st.integers(0, len(nodes) - 1))
        field = draw(st.sampled_from([f.name for f in fields(NodeState)]))
        bad = st.sampled_from(ODD[field]) if field in ODD else odd_float
        nodes[k] = replace(nodes[k], **{field: draw(bad)})
    return nodes


pods = st.one_of(
    *[st.builds(PodRequest, st.floats(0.0, 8.0), st.floats(0.0, 16 * GIB))] * 4,
    st.builds(PodRequest, odd_float, st.floats(0.0, 16 * GIB)),
    st.builds(PodRequest, st.floats(0.0, 8.0), odd_float),
)
versions = st.sampled_from([NODE_SCHEMA_VERSION] * 9 + ["ecrl.node/v0"])


def outcome(fn):
    try:
        return fn()
    except InvalidRequest as exc:
        return ("InvalidRequest", str(exc))


@EQUAL
@given(nodes=candidates(), pod=pods, version=versions, which=st.sampled_from(sorted(CORES)))
def test_columnar_score_nodes_equals_the_per_node_answer(nodes, pod, version, which) -> None:
    policy = CORES[which]
    request = convert.score_request(nodes, pod, version)
    fast = outcome(lambda: policy.score_columns(*convert.score_columns(request)))
    slow = outcome(lambda: policy.score_nodes(*convert.score_inputs(request)))
    assert fast == slow


@EQUAL
@given(nodes=candidates(), pod=pods)
def test_columnar_features_are_bit_identical_or_defer(nodes, pod) -> None:
    fast = node_features_columns(NodeColumns.of(nodes), pod)
    if fast is None:
        return  # deferred to the per-node code (which the test above compares)
    assert np.array_equal(fast, node_features(nodes, pod), equal_nan=True)


def test_ordinary_candidates_take_the_columnar_path() -> None:
    """Without this, the equality above could hold because everything deferred."""
    nodes = [
        NodeState(
            f"n{i}",
            1,
            4,
            i % 5,
            1.0,
            0.5 if i % 2 else None,
            0.4,
            16.0,
            i / 4,
            64 * GIB,
            i * GIB,
            i % 3,
        )
        for i in range(100)
    ]
    pod = PodRequest(2.0, 2 * GIB)
    x = node_features_columns(NodeColumns.of(nodes), pod)
    assert x is not None and np.array_equal(x, node_features(nodes, pod))
    assert NodeColumns.of(nodes).states() == nodes


@EQUAL
@given(
    st.lists(
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
        | st.sampled_from([0.0, 0.05, 0.15, 0.25, 0.35, 0.45, 1.0]),
        min_size=1,
        max_size=60,
    )
)
def test_priorities_round_like_python_round(scores: list[float]) -> None:
    """The vectorized scaling gives what ``round`` gave value by value (half to even)."""
    from ecrl.placement import MAX_EXTENDER_PRIORITY, extender_priorities

    s = np.asarray(scores, dtype=float)
    lo, hi = float(s.min()), float(s.max())
    scaled = (s - lo) / (hi - lo) * MAX_EXTENDER_PRIORITY if hi > lo else None
    if scaled is not None and not np.isfinite(scaled).all():
        with pytest.raises(ValueError):
            extender_priorities(s)
        return
    want = [10] * len(s) if scaled is None else [round(float(v)) for v in scaled]
    got = extender_priorities(s)
    assert got == want and all(type(p) is int for p in got)
