"""Scheduler extender without HTTP: wire format, slot accounting, scoring, fail-open, cache."""

from __future__ import annotations

import json
import time

import pytest

from ecrl.errors import InvalidRequest, NotReady, Temporary
from ecrl.placement import MAX_EXTENDER_PRIORITY, NodeState, PodRequest
from services.scheduler_extender.cache import ClusterCache, StaticView, build_snapshot, parse_node
from services.scheduler_extender.config import ExtenderConfig
from services.scheduler_extender.extender import FAIL_OPEN, OK, PASSTHROUGH, Extender
from services.scheduler_extender.gpu import filter_nodes, node_state
from services.scheduler_extender.scoring import LocalScorer, PolicyServerScorer, prioritize
from services.scheduler_extender.wire import (
    BindingArgs,
    FilterResult,
    HostPriority,
    binding_result_json,
    filter_result_json,
    load_json,
    parse_binding_args,
    parse_extender_args,
    parse_pod,
    parse_quantity,
    priorities_json,
)


# ----------------------------------------------------------------------------- fixtures
def k8s_node(name: str, gpus: int | None = 4, cpu="15", memory="31Gi", speed=None) -> dict:
    alloc = {"cpu": cpu, "memory": memory, "pods": "110"}
    if gpus is not None:
        alloc["nvidia.com/gpu"] = str(gpus)
    meta: dict = {"name": name, "labels": {"nvidia.com/gpu.count": "1"} if gpus else {}}
    if speed is not None:
        meta["annotations"] = {"ecrl.io/gpu-speed": speed}
    return {"metadata": meta, "status": {"allocatable": alloc}}


def k8s_pod(
    name: str,
    gpus: int = 1,
    node: str = "",
    cpu: str = "1",
    memory: str = "1Gi",
    app: str | None = "triton",
    phase: str = "Running",
    uid: str | None = None,
) -> dict:
    limits = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    meta: dict = {"name": name, "namespace": "default", "uid": uid or f"uid-{name}"}
    if app:
        meta["labels"] = {"app.kubernetes.io/name": app}
    return {
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [{"name": "triton", "resources": {"limits": limits, "requests": limits}}],
        },
        "status": {"phase": phase},
    }


def snapshot(nodes: list[dict], pods: list[dict]):
    return build_snapshot(nodes, pods, taken_at_s=0.0)


def args_json(pod: dict, names: list[str]) -> dict:
    return {"Pod": pod, "Nodes": None, "NodeNames": names}


class FakeCache:
    """A cache object handing out a fixed snapshot, or raising like an unreachable apiserver."""

    def __init__(self, snap=None, error: Exception | None = None) -> None:
        self.snap, self.error = snap, error

    def snapshot(self):
        if self.error is not None:
            raise self.error
        return self.snap


BOX = k8s_node("box")


# ------------------------------------------------------------------------------ wire format
def test_extender_args_with_node_names_parse_pod_and_candidates() -> None:
    args = parse_extender_args(args_json(k8s_pod("p", gpus=2), ["box", "box2"]))
    assert args.node_names == ("box", "box2")
    assert args.pod.key == "default/p" and args.pod.gpu_slots == 2
    assert args.pod.cpu_cores == 1.0 and args.pod.memory_bytes == 2**30
    assert args.pod.app == ("app.kubernetes.io/name", "triton")


def test_filter_result_has_exactly_the_go_field_names_and_round_trips() -> None:
    args = parse_extender_args(args_json(k8s_pod("p"), ["a", "b", "c"]))
    result = FilterResult(("a",), {"b": "full"}, {"c": "no GPU"})
    out = json.loads(json.dumps(filter_result_json(result, args)))
    assert out == {
        "Nodes": None,
        "NodeNames": ["a"],
        "FailedNodes": {"b": "full"},
        "FailedAndUnresolvableNodes": {"c": "no GPU"},
        "Error": "",
    }


def test_host_priority_list_uses_host_and_score_keys() -> None:
    out = json.loads(json.dumps(priorities_json([HostPriority("box", 7), HostPriority("b", 0)])))
    assert out == [{"Host": "box", "Score": 7}, {"Host": "b", "Score": 0}]


def test_binding_args_round_trip() -> None:
    body = {"PodName": "p", "PodNamespace": "ns", "PodUID": "u-1", "Node": "box"}
    assert parse_binding_args(load_json(json.dumps(body).encode())) == BindingArgs(
        "p", "ns", "u-1", "box"
    )
    assert binding_result_json() == {"Error": ""}
    assert binding_result_json("boom") == {"Error": "boom"}


def test_nodes_list_instead_of_node_names_is_echoed_back_filtered() -> None:
    """Not nodeCacheCapable: the scheduler sends a NodeList and expects Nodes back."""
    nodes = {"metadata": {}, "items": [k8s_node("a"), k8s_node("b")]}
    args = parse_extender_args({"Pod": k8s_pod("p"), "Nodes": nodes, "NodeNames": None})
    assert args.node_names == ("a", "b")
    out = filter_result_json(FilterResult(("b",), {"a": "full"}), args)
    assert out["NodeNames"] is None
    assert [n["metadata"]["name"] for n in out["Nodes"]["items"]] == ["b"]


def test_missing_node_names_means_no_candidates() -> None:
    assert parse_extender_args({"Pod": k8s_pod("p")}).node_names == ()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "body: must be an object, got list"),
        ({"NodeNames": ["box"]}, "Pod: missing"),
        ({"Pod": None, "NodeNames": ["box"]}, "Pod: missing"),
        ({"Pod": "p", "NodeNames": ["box"]}, "Pod: must be an object, got str"),
        ({"Pod": k8s_pod("p"), "NodeNames": "box"}, "NodeNames: must be a list or null, got str"),
        ({"Pod": k8s_pod("p"), "NodeNames": [1]}, "NodeNames[0]: must be a non-empty string"),
        ({"Pod": k8s_pod("p"), "NodeNames": [""]}, "NodeNames[0]: must be a non-empty string"),
        ({"Pod": {"metadata": {}}, "NodeNames": []}, "Pod.metadata.name: must be a non-empty"),
        ({"Pod": {"metadata": {"name": 3}}}, "Pod.metadata.name: must be a non-empty string"),
        ({"Pod": {"metadata": {"name": "p"}, "spec": []}}, "Pod.spec: must be an object"),
        (
            {"Pod": {"metadata": {"name": "p"}, "spec": {"containers": {}}}},
            "Pod.spec.containers: must be a list",
        ),
        ({"Pod": {"metadata": {"name": "p"}, "spec": {"containers": [3]}}}, "containers[0]"),
    ],
)
def test_malformed_extender_args_name_the_field(body: object, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_extender_args(body)


def test_bad_quantities_in_the_pod_are_rejected_with_their_path() -> None:
    pod = k8s_pod("p")
    pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "lots"
    with pytest.raises(InvalidRequest, match=r"containers\[0\]\.resources\.requests\.cpu"):
        parse_pod(pod)
    pod = k8s_pod("p")
    pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "500m"
    with pytest.raises(InvalidRequest, match="whole number"):
        parse_pod(pod)


def test_body_that_is_not_json_is_invalid() -> None:
    for body in (b"", b"{", b"\xff\xfe\xfa", b"NaN", b'{"a": Infinity}', b"[" * 100_000):
        with pytest.raises(InvalidRequest, match="body: not valid JSON"):
            load_json(body)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1.0),
        ("500m", 0.5),
        ("1Gi", 2**30),
        ("1.5G", 1.5e9),
        ("12Ki", 12288.0),
        ("1e3", 1000.0),
        (".5", 0.5),
        (2, 2.0),
        (0.25, 0.25),
    ],
)
def test_quantities_follow_the_kubernetes_grammar(text: object, value: float) -> None:
    assert parse_quantity(text, "q") == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "abc", "inf", "nan", "-1", "1.5.5", "1E", "1e999", True])
def test_invalid_or_out_of_range_quantities_are_refused(text: object) -> None:
    with pytest.raises(InvalidRequest, match="^q: "):
        parse_quantity(text, "q")


def test_pod_requests_follow_upstream_pod_requests() -> None:
    """Limits-only defaults the request; init containers count as a max, sidecars add."""
    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {"resources": {"limits": {"cpu": "1", "nvidia.com/gpu": "1"}}},
                {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
            ],
            "initContainers": [
                {"resources": {"requests": {"cpu": "4"}}},
                {"restartPolicy": "Always", "resources": {"requests": {"memory": "1Gi"}}},
            ],
            "overhead": {"cpu": "100m"},
        },
    }
    p = parse_pod(pod)
    assert p.namespace == "default" and p.gpu_slots == 1
    assert p.cpu_cores == pytest.approx(4.1)
    assert p.memory_bytes == 2 * 2**30


# ------------------------------------------------------------------------- filter logic
def test_filter_keeps_node_with_a_free_gpu_slot() -> None:
    snap = snapshot([BOX], [k8s_pod(f"r{i}", node="box") for i in range(3)])
    result = filter_nodes(snap, parse_pod(k8s_pod("new")), ["box"])
    assert result == FilterResult(("box",), {}, {})


def test_filter_rejects_node_without_free_gpu_slot() -> None:
    snap = snapshot([BOX], [k8s_pod(f"r{i}", node="box") for i in range(4)])
    result = filter_nodes(snap, parse_pod(k8s_pod("new")), ["box"])
    assert result.node_names == ()
    assert result.failed == {"box": "nvidia.com/gpu: 1 requested, 0 of 4 time-sliced slots free"}
    assert result.unresolvable == {}


def test_filter_marks_nodes_that_can_never_fit_unresolvable() -> None:
    snap = snapshot([BOX, k8s_node("cpu-only", gpus=None)], [])
    result = filter_nodes(snap, parse_pod(k8s_pod("big", gpus=5)), ["box", "cpu-only"])
    assert result.node_names == ()
    assert result.unresolvable == {
        "box": "nvidia.com/gpu: 5 requested, node has only 4 time-sliced slots",
        "cpu-only": "nvidia.com/gpu: 5 requested, node has no GPU",
    }


def test_filter_ignores_terminal_and_pending_pods_and_the_pod_itself() -> None:
    pods = [
        k8s_pod("done", node="box", phase="Succeeded"),
        k8s_pod("failed", node="box", phase="Failed"),
        k8s_pod("pending"),  # no node yet
        k8s_pod("a", node="box"),
        k8s_pod("b", node="box"),
        k8s_pod("c", node="box"),
        k8s_pod("me", node="box", uid="uid-me"),  # already bound in the cache: not counted
    ]
    snap = snapshot([BOX], pods)
    assert filter_nodes(snap, parse_pod(k8s_pod("me", uid="uid-me")), ["box"]).node_names == (
        "box",
    )


def test_filter_passes_pods_without_gpu_request_and_unknown_nodes() -> None:
    snap = snapshot([BOX], [k8s_pod(f"r{i}", node="box") for i in range(4)])
    assert filter_nodes(snap, parse_pod(k8s_pod("cpu", gpus=0)), ["box", "x"]).node_names == (
        "box",
        "x",
    )
    result = filter_nodes(snap, parse_pod(k8s_pod("new")), ["box", "just-joined"])
    assert result.node_names == ("just-joined",)


def test_node_state_comes_from_the_cache_and_never_invents_gpu_util() -> None:
    box2 = k8s_node("box2", gpus=8, cpu="7", memory="15Gi", speed="1.5")
    pods = [
        k8s_pod("t1", node="box2", app="triton"),
        k8s_pod("t2", node="box2", app="triton"),
        k8s_pod("o1", node="box2", app="other", cpu="2", memory="2Gi"),
    ]
    snap = snapshot([BOX, box2], pods)
    state = node_state(snap, "box2", parse_pod(k8s_pod("new", app="triton")))
    assert state == NodeState(
        name="box2",
        gpu_count=1,
        gpu_slots_total=8,
        gpu_slots_free=5,
        gpu_speed=1.5,
        gpu_util_ratio=None,
        vram_free_ratio=5 / 8,
        cpu_allocatable_cores=7.0,
        cpu_requested_cores=4.0,
        memory_allocatable_bytes=15 * 2**30,
        memory_requested_bytes=4 * 2**30,
        replicas=2,
    )
    assert node_state(snap, "unknown", parse_pod(k8s_pod("new"))) is None


def test_bad_gpu_speed_annotation_defaults_to_one() -> None:
    for raw in ("fast", "-1", "nan"):
        assert parse_node(k8s_node("n", speed=raw)).gpu_speed == 1.0


# ------------------------------------------------------------------------------ scoring
def test_prioritize_scores_candidates_from_zero_to_ten() -> None:
    busy = [k8s_pod(f"r{i}", node="box", cpu="4", memory="8Gi") for i in range(3)]
    snap = snapshot([BOX, k8s_node("idle"), k8s_node("cpu", gpus=None)], busy)
    out = prioritize(snap, parse_pod(k8s_pod("new")), ["box", "idle", "cpu"], LocalScorer())
    scores = {p.host: p.score for p in out}
    assert scores["idle"] == MAX_EXTENDER_PRIORITY and scores["box"] < scores["idle"]
    assert scores["cpu"] == 0  # no GPU: the scorer cannot judge it


def test_a_candidate_the_cache_has_not_seen_makes_prioritize_fail_open() -> None:
    """Scoring only the known nodes would rank a node that just joined last."""
    ext = Extender(StaticView(snapshot([BOX], [])), LocalScorer())
    handled = ext.prioritize(parse_extender_args(args_json(k8s_pod("p"), ["box", "new-node"])))
    assert handled.outcome == FAIL_OPEN and "new-node" in handled.reason
    assert [p.score for p in handled.result] == [0, 0]


class FixedScorer:
    name = "fixed"

    def __init__(self, priorities: list[int]) -> None:
        self.priorities = priorities
        self.seen: list[NodeState] = []

    def score(self, nodes: list[NodeState], pod: PodRequest) -> list[int]:
        self.seen = nodes
        return self.priorities


def test_scores_are_clamped_and_a_wrong_count_is_an_error() -> None:
    snap = snapshot([BOX, k8s_node("b")], [])
    pod = parse_pod(k8s_pod("new"))
    out = prioritize(snap, pod, ["box", "b"], FixedScorer([99, -3]))
    assert [p.score for p in out] == [10, 0]
    with pytest.raises(Temporary):
        prioritize(snap, pod, ["box", "b"], FixedScorer([1]))


def test_policy_server_scorer_uses_the_replies_priorities() -> None:
    class Reply:
        priorities = (3, 10)
        scores = (0.1, 0.9)

    class Client:
        def __init__(self, target: str, timeout_s: float) -> None:
            assert (target, timeout_s) == ("ps:50051", 0.5)

        def score_nodes(self, nodes, pod):
            return Reply()

    scorer = PolicyServerScorer("ps:50051", 0.5, client_factory=lambda: Client)
    snap = snapshot([BOX, k8s_node("b")], [])
    out = prioritize(snap, parse_pod(k8s_pod("new")), ["box", "b"], scorer)
    assert [p.score for p in out] == [3, 10]


def test_policy_server_scorer_fails_open_when_the_client_cannot_be_imported() -> None:
    def missing():
        raise ImportError("No module named 'services.policy_server.client'")

    ext = Extender(
        StaticView(snapshot([BOX, k8s_node("b")], [])),
        PolicyServerScorer("ps:1", 1.0, client_factory=missing),
    )
    handled = ext.prioritize(parse_extender_args(args_json(k8s_pod("p"), ["box", "b"])))
    assert handled.outcome == FAIL_OPEN and "unavailable" in handled.reason
    assert [p.score for p in handled.result] == [0, 0]


def test_policy_server_errors_fail_open() -> None:
    class Client:
        def __init__(self, target, timeout_s) -> None: ...

        def score_nodes(self, nodes, pod):
            raise TimeoutError("deadline exceeded")

    ext = Extender(
        StaticView(snapshot([BOX], [])),
        PolicyServerScorer("ps:1", 1.0, client_factory=lambda: Client),
    )
    handled = ext.prioritize(parse_extender_args(args_json(k8s_pod("p"), ["box"])))
    assert handled.outcome == FAIL_OPEN and "deadline exceeded" in handled.reason


# ---------------------------------------------------------------------------- fail open
def test_filter_fails_open_when_the_cache_raises() -> None:
    ext = Extender(FakeCache(error=RuntimeError("apiserver down")), LocalScorer())
    handled = ext.filter(parse_extender_args(args_json(k8s_pod("p"), ["box", "b"])))
    assert handled.outcome == FAIL_OPEN and "apiserver down" in handled.reason
    assert handled.result == FilterResult(("box", "b"))


def test_prioritize_fails_open_with_neutral_scores() -> None:
    ext = Extender(FakeCache(error=NotReady("cold")), LocalScorer())
    handled = ext.prioritize(parse_extender_args(args_json(k8s_pod("p"), ["box", "b"])))
    assert handled.outcome == FAIL_OPEN
    assert handled.result == [HostPriority("box", 0), HostPriority("b", 0)]


def test_pods_without_gpu_request_pass_through_without_the_cache() -> None:
    ext = Extender(FakeCache(error=AssertionError("not consulted")), LocalScorer())
    args = parse_extender_args(args_json(k8s_pod("p", gpus=0), ["box"]))
    assert ext.filter(args).outcome == PASSTHROUGH
    assert ext.prioritize(args).outcome == PASSTHROUGH


def test_extender_filter_on_a_fake_cache() -> None:
    snap = snapshot([BOX, k8s_node("b")], [k8s_pod(f"r{i}", node="box") for i in range(4)])
    ext = Extender(FakeCache(snap), LocalScorer())
    handled = ext.filter(parse_extender_args(args_json(k8s_pod("p"), ["box", "b"])))
    assert handled.outcome == OK
    assert handled.result.node_names == ("b",) and list(handled.result.failed) == ["box"]


def test_bind_without_client_and_with_failing_client_reports_the_error() -> None:
    args = BindingArgs("p", "ns", "u", "box")
    assert "no Kubernetes client" in Extender(FakeCache(), LocalScorer()).bind(args).result

    class Broken:
        def bind(self, namespace, name, uid, node):
            raise ConnectionError("refused")

    handled = Extender(FakeCache(), LocalScorer(), Broken()).bind(args)
    assert handled.outcome == "error" and "ns/p" in handled.result and "refused" in handled.result


# -------------------------------------------------------------------------------- cache
class FakeSource:
    def __init__(self) -> None:
        self.fail = False

    def list_nodes(self) -> list[dict]:
        if self.fail:
            raise ConnectionRefusedError("apiserver down")
        return [BOX, {"metadata": {}}]  # the second one is unreadable: skipped

    def list_pods(self) -> list[dict]:
        return [k8s_pod("a", node="box")]


def test_cache_is_not_ready_before_a_list_and_stale_after_the_apiserver_goes() -> None:
    now = [100.0]
    source = FakeSource()
    cache = ClusterCache(source, refresh_interval_s=2.0, max_age_s=10.0, clock=lambda: now[0])
    with pytest.raises(NotReady):
        cache.snapshot()
    assert not cache.ready
    snap = cache.refresh()
    assert list(snap.nodes) == ["box"] and snap.usage["box"].gpu_slots == 1
    assert cache.snapshot() is snap and cache.ready
    source.fail = True
    now[0] += 5.0
    with pytest.raises(Temporary, match="apiserver down"):
        cache.refresh()
    assert cache.snapshot() is snap  # still fresh enough
    now[0] += 6.0
    with pytest.raises(Temporary, match="last successful list 11.0 s ago"):
        cache.snapshot()
    assert cache.metrics.refreshes["error"]._value.get() == 1


def test_cache_thread_starts_and_stops() -> None:
    cache = ClusterCache(FakeSource(), refresh_interval_s=0.1)
    cache.start()
    try:
        deadline = time.monotonic() + 5.0
        while not cache.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.ready
    finally:
        cache.stop()
    assert cache._thread is None


# ------------------------------------------------------------------------------- config
def test_config_refuses_a_scorer_timeout_near_the_scheduler_timeout() -> None:
    with pytest.raises(ValueError, match="--scorer-timeout"):
        ExtenderConfig(scorer_timeout_s=4.0).validate()
    assert ExtenderConfig().validate().listen == "127.0.0.1:8888"
    assert ExtenderConfig(host="::1").listen == "[::1]:8888"
