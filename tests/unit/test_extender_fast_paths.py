"""The extender's fast request path gives exactly the answers of the straightforward one.

``/filter`` and ``/prioritize`` read per-node columns built once per snapshot
(``NodeTable``) and score the default scheduler's way in numpy (``kube_default_priorities``);
the HTTP layer answers the two verbs without Flask's request machinery. Here the reference is
the per-node code they replaced — ``ClusterSnapshot.node_usage``, ``node_state`` and
``ecrl.placement``'s scorers, node by node — on random clusters, including the edge cases
(the pod already counted on a node, nodes without GPU/CPU/memory, unknown and duplicate
candidates, quantities too large for exact int64 arithmetic).
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from werkzeug.test import EnvironBuilder

from ecrl.errors import Temporary
from ecrl.placement import BUILTIN_SCORERS, MAX_EXTENDER_PRIORITY, extender_priorities
from services.scheduler_extender.app import create_app
from services.scheduler_extender.cache import StaticView, build_snapshot
from services.scheduler_extender.extender import Extender
from services.scheduler_extender.gpu import ClusterSnapshot, filter_nodes, node_state, pod_request
from services.scheduler_extender.scoring import (
    LocalScorer,
    kube_default_scores,
    priority_scores,
)
from services.scheduler_extender.wire import (
    GPU_RESOURCE,
    FilterResult,
    HostPriority,
    Pod,
    parse_pod,
    priorities_json,
    scores_json_text,
)
from tests.unit.test_extender_wire import k8s_node, k8s_pod

NAMES = ("n0", "n1", "n2", "n3", "n4", "n5")
CPU = st.sampled_from(["0", "1m", "250m", "1", "2", "3.3", "15", "64", "7"])
MEMORY = st.sampled_from(["0", "1", "1Mi", "1Gi", "4Gi", "31Gi", "123456789", "5Gi", "3M"])
HUGE_CPU = st.sampled_from(["1e9", "1e15", "1e17"])
"""Millicores past 2^53: the exact per-node path takes over."""
HUGE_MEMORY = st.sampled_from(["1e15", "1e17", "1e18"])
TOO_BIG = st.sampled_from(["1Ei", "1e19"])
"""Over MAX_QUANTITY: such a node or bound pod is skipped by the cache."""
GPUS = st.sampled_from([None, 0, 1, 2, 4, 8])
APPS = st.sampled_from([None, "triton", "other"])


# ------------------------------------------------------------------- the reference code
def reference_filter(snap: ClusterSnapshot, pod: Pod, names: list[str]) -> FilterResult:
    """filter_nodes as it was: one ``node_usage`` per candidate."""
    need = pod.gpu_slots
    if need <= 0:
        return FilterResult(tuple(names))
    passed, failed, unresolvable = [], {}, {}
    for name in names:
        node = snap.nodes.get(name)
        if node is None:
            passed.append(name)
            continue
        total = node.gpu_slots_total
        free = max(total - snap.node_usage(name, pod).gpu_slots, 0)
        if total <= 0:
            unresolvable[name] = f"{GPU_RESOURCE}: {need} requested, node has no GPU"
        elif total < need:
            unresolvable[name] = (
                f"{GPU_RESOURCE}: {need} requested, node has only {total} time-sliced slots"
            )
        elif free < need:
            failed[name] = (
                f"{GPU_RESOURCE}: {need} requested, {free} of {total} time-sliced slots free"
            )
        else:
            passed.append(name)
    return FilterResult(tuple(passed), failed, unresolvable)


def reference_priorities(snap: ClusterSnapshot, pod: Pod, names: list[str], node_scorer):
    """prioritize as it was: a NodeState per candidate, the scorer node by node."""
    if pod.gpu_slots <= 0 or not names:
        return [0] * len(names)
    unknown = [n for n in names if n not in snap.nodes]
    if unknown:
        raise Temporary(f"nodes not in the cluster cache yet: {', '.join(unknown[:5])}")
    states = [node_state(snap, n, pod) for n in names]
    known = [s for s in states if s is not None]
    scores: dict[str, int] = {}
    if known:
        priorities = extender_priorities(node_scorer.score(known, pod_request(pod)))
        for s, p in zip(known, priorities, strict=True):
            scores[s.name] = min(max(int(p), 0), MAX_EXTENDER_PRIORITY)
    return [scores.get(n, 0) for n in names]


def outcome(fn, *args) -> tuple[str, object]:
    try:
        return "ok", fn(*args)
    except Exception as exc:
        return type(exc).__name__, str(exc)


class PerNode:
    """A scorer without ``score_table``: prioritize gives it the (memoized) NodeStates."""

    def __init__(self, node_scorer) -> None:
        self.node_scorer = node_scorer
        self.name = "per-node"

    def score(self, nodes, pod):
        return extender_priorities(self.node_scorer.score(nodes, pod))


# --------------------------------------------------------------------- random clusters
def _cpu(draw) -> str:
    return draw(HUGE_CPU if draw(st.integers(0, 19)) == 0 else CPU)


def _memory(draw) -> str:
    rare = draw(st.integers(0, 39))
    return draw(TOO_BIG if rare == 0 else HUGE_MEMORY if rare == 1 else MEMORY)


@st.composite
def clusters(draw):
    nodes = []
    for name in draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True)):
        node = k8s_node(
            name,
            gpus=draw(GPUS),
            cpu=_cpu(draw),
            memory=_memory(draw),
        )
        nodes.append(node)
    pending = k8s_pod(
        "new",
        gpus=draw(st.sampled_from([1, 1, 1, 2, 5, 0])),
        cpu=_cpu(draw),
        memory=draw(MEMORY),
        app=draw(APPS),
        uid="uid-new",
    )
    pods = []
    for i in range(draw(st.integers(0, 12))):
        pods.append(
            k8s_pod(
                f"p{i}",
                gpus=draw(st.sampled_from([0, 1, 2])),
                node=draw(st.sampled_from([*NAMES, ""])),
                cpu=_cpu(draw),
                memory=_memory(draw),
                app=draw(APPS),
                phase=draw(st.sampled_from(["Running", "Running", "Pending", "Succeeded"])),
                uid=draw(st.sampled_from([f"uid-p{i}", "uid-new"])),  # the pod itself, bound
            )
        )
    if draw(st.booleans()):  # the pending pod as the cache may list it: already bound
        pods.append(
            {**pending, "spec": {**pending["spec"], "nodeName": draw(st.sampled_from(NAMES))}}
        )
    listed = [n["metadata"]["name"] for n in nodes]
    names = draw(st.lists(st.sampled_from(listed), min_size=1, max_size=8))
    if draw(st.integers(0, 9)) == 0:  # a node the cache has not listed yet
        names.insert(draw(st.integers(0, len(names))), "ghost")
    return build_snapshot(nodes, pods, 0.0), parse_pod(pending), names


EXAMPLES = settings(max_examples=600, deadline=None, derandomize=True)


@EXAMPLES
@given(case=clusters(), scorer=st.sampled_from(sorted(BUILTIN_SCORERS)))
def test_vectorized_default_scores_equal_the_per_node_ones(case, scorer: str) -> None:
    snap, pod, names = case
    node_scorer = BUILTIN_SCORERS[scorer]
    expected = outcome(reference_priorities, snap, pod, names, node_scorer)
    assert outcome(priority_scores, snap, pod, names, LocalScorer(node_scorer)) == expected
    # the per-node path with memoized states (what a learned or remote scorer gets)
    assert outcome(priority_scores, snap, pod, names, PerNode(node_scorer)) == expected
    assert outcome(priority_scores, snap, pod, names, PerNode(node_scorer)) == expected  # memo


@EXAMPLES
@given(case=clusters(), scorer=st.sampled_from(sorted(BUILTIN_SCORERS)))
def test_vectorized_raw_scores_equal_the_per_node_ones(case, scorer: str) -> None:
    """Before scaling to 0–10 (which hides off-by-one errors), score for score."""
    snap, pod, names = case
    if any(n not in snap.nodes for n in names):
        return
    table = snap.table
    sel = np.array([table.row[n] for n in names if table.scorable[table.row[n]]], dtype=np.intp)
    states = [s for s in (node_state(snap, n, pod) for n in names) if s is not None]
    assert len(sel) == len(states)
    if not states:
        return
    node_scorer = BUILTIN_SCORERS[scorer]
    got = kube_default_scores(table, sel, pod, node_scorer.plugins)
    if got is not None:
        expected = node_scorer.score(states, pod_request(pod))
        assert got.tolist() == expected.tolist()


@EXAMPLES
@given(case=clusters())
def test_filter_from_the_node_table_equals_the_per_node_filter(case) -> None:
    snap, pod, names = case
    assert filter_nodes(snap, pod, names) == reference_filter(snap, pod, names)


def test_a_100_node_cluster_scores_exactly_like_the_per_node_code() -> None:
    """The benchmark's shape: 100 varied nodes, bound pods of two apps, the pod bound once."""
    nodes = [
        k8s_node(f"gpu-{i:03d}", gpus=1 + i % 4, cpu=str(8 + i % 9), memory=f"{16 + 2 * (i % 8)}Gi")
        for i in range(100)
    ]
    pods = [
        k8s_pod(f"r{i}", node=f"gpu-{i * 7 % 100:03d}", cpu="2", memory="4Gi", app=app)
        for i, app in zip(range(60), ["triton", "other"] * 30, strict=True)
    ]
    pods.append(k8s_pod("new", node="gpu-042", cpu="2", memory="4Gi", uid="uid-new"))
    snap = build_snapshot(nodes, pods, 0.0)
    pod = parse_pod(k8s_pod("new", cpu="2", memory="4Gi", uid="uid-new"))
    names = [f"gpu-{i:03d}" for i in range(100)]
    got = priority_scores(snap, pod, names, LocalScorer())
    assert got == reference_priorities(snap, pod, names, BUILTIN_SCORERS["default-scheduler"])
    assert len(set(got)) > 2 and all(type(s) is int for s in got)
    assert filter_nodes(snap, pod, names) == reference_filter(snap, pod, names)


def test_a_pod_the_cache_lists_on_a_candidate_is_not_counted_twice() -> None:
    box = k8s_node("box", cpu="4", memory="8Gi")
    bound_self = k8s_pod("new", node="box", cpu="2", memory="4Gi", uid="uid-new")
    snap = build_snapshot([box, k8s_node("b", cpu="4", memory="8Gi")], [bound_self], 0.0)
    pod = parse_pod(k8s_pod("new", cpu="2", memory="4Gi", uid="uid-new"))
    assert priority_scores(snap, pod, ["box", "b"], LocalScorer()) == [10, 10]
    other = parse_pod(k8s_pod("other", cpu="2", memory="4Gi"))
    assert priority_scores(snap, other, ["box", "b"], LocalScorer()) == [0, 10]


# ------------------------------------------------------------------------- HTTP layer
def test_scores_text_is_the_host_priority_list_json() -> None:
    names = ["box", 'we"ird\\', "ünïcode-node", "b"]
    scores = [10, 0, 3, 7]
    text = scores_json_text(names, scores)
    expected = priorities_json([HostPriority(n, s) for n, s in zip(names, scores, strict=True)])
    assert json.loads(text) == expected
    assert text.isascii() and scores_json_text([], []) == "[]"


def _call(app, path: str, data: bytes, content_length: bool) -> tuple[str, dict, bytes]:
    """Run the WSGI app directly; without Content-Length the Flask route answers."""
    environ = EnvironBuilder(
        path=path, method="POST", data=data, content_type="application/json"
    ).get_environ()
    if not content_length:
        del environ["CONTENT_LENGTH"]
        environ["wsgi.input"] = io.BytesIO(data)
        environ["wsgi.input_terminated"] = True
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


@pytest.mark.parametrize("path", ["/filter", "/prioritize"])
@pytest.mark.parametrize(
    "body",
    [
        {"Pod": k8s_pod("p"), "Nodes": None, "NodeNames": ["box", "b", "cpu"]},
        {"Pod": k8s_pod("p", gpus=0), "Nodes": None, "NodeNames": ["box"]},
        {"Pod": k8s_pod("p"), "Nodes": None, "NodeNames": ["box", "ghost"]},
        {"Pod": k8s_pod("p"), "Nodes": {"items": [k8s_node("box"), k8s_node("b")]}},
        {"Pod": 3, "NodeNames": ["box"]},
    ],
)
def test_the_fast_path_and_the_flask_route_answer_alike(path: str, body: dict) -> None:
    snap = build_snapshot(
        [k8s_node("box"), k8s_node("b", cpu="4"), k8s_node("cpu", gpus=None)],
        [k8s_pod(f"r{i}", node="box") for i in range(3)],
        0.0,
    )
    app = create_app(Extender(StaticView(snap), LocalScorer()), CollectorRegistry())
    data = json.dumps(body).encode()
    fast = _call(app, path, data, content_length=True)
    routed = _call(app, path, data, content_length=False)
    assert fast[0] == routed[0] and fast[0].split()[0] in ("200", "400")
    assert fast[1]["Content-Type"] == routed[1]["Content-Type"] == "application/json"
    assert int(fast[1]["Content-Length"]) == len(fast[2])
    assert json.loads(fast[2]) == json.loads(routed[2])


def test_the_prioritize_log_line_has_nodes_and_per_node_scores(
    caplog: pytest.LogCaptureFixture,
) -> None:
    snap = build_snapshot([k8s_node("box"), k8s_node("idle")], [k8s_pod("r", node="box")], 0.0)
    client = create_app(
        Extender(StaticView(snap), LocalScorer()), CollectorRegistry()
    ).test_client()
    with caplog.at_level(logging.INFO, logger="ecrl.extender.requests"):
        resp = client.post("/prioritize", json={"Pod": k8s_pod("p"), "NodeNames": ["box", "idle"]})
    (record,) = [r for r in caplog.records if r.name == "ecrl.extender.requests"]
    assert record.verb == "prioritize" and record.outcome == "ok" and record.pod == "default/p"
    assert record.nodes == ["box", "idle"]
    assert record.result == {p["Host"]: p["Score"] for p in resp.get_json()}
    assert record.result["idle"] == 10 and record.result["box"] < 10


def test_an_unexpected_error_on_the_fast_path_is_a_json_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Extender):
        def prioritize_scores(self, args):
            raise RuntimeError("bug")

    app = create_app(Broken(StaticView(build_snapshot([], [], 0.0)), LocalScorer()))
    data = json.dumps({"Pod": k8s_pod("p"), "NodeNames": ["box"]}).encode()
    with caplog.at_level(logging.ERROR, logger="ecrl.extender.requests"):
        status, _, body = _call(app, "/prioritize", data, content_length=True)
    assert status.startswith("500") and json.loads(body) == {
        "Error": "internal error: RuntimeError"
    }
    assert any(r.getMessage() == "unhandled error" for r in caplog.records)
