"""The extender's scorer against a real policy server over gRPC: the learned node scores
reach /prioritize as 0–10 priorities, and a dead server makes the extender fail open."""

from __future__ import annotations

from pathlib import Path

from ecrl.placement import NodeState, PodRequest
from ecrl.policy_model import builtin_policy_path
from services.policy_server.config import ServerConfig
from services.policy_server.server import PolicyServer
from services.scheduler_extender.scoring import PolicyServerScorer

SCORER = Path(builtin_policy_path("placement"))


def node(name: str, free: int, speed: float) -> NodeState:
    return NodeState(
        name=name,
        gpu_count=1,
        gpu_slots_total=4,
        gpu_slots_free=free,
        gpu_speed=speed,
        gpu_util_ratio=None,
        vram_free_ratio=free / 4,
        cpu_allocatable_cores=16.0,
        cpu_requested_cores=2.0 * (4 - free),
        memory_allocatable_bytes=32 * 2**30,
        memory_requested_bytes=4 * 2**30 * (4 - free),
        replicas=4 - free,
    )


def scorer_server() -> PolicyServer:
    """A policy server on a free port with the packaged policy and the packaged scorer."""
    return PolicyServer(
        ServerConfig(
            policy_path=builtin_policy_path(),
            scorer_path=str(SCORER),
            listen="127.0.0.1:0",
            metrics_listen=None,
            reload_interval_s=0,
        )
    )


def test_prioritize_scores_come_from_the_policy_servers_scorer() -> None:
    nodes = [node("busy", 1, 1.0), node("idle-fast", 4, 1.7), node("idle-slow", 4, 0.5)]
    pod = PodRequest(cpu_cores=2.0, memory_bytes=4 * 2**30)
    with scorer_server() as srv:
        scorer = PolicyServerScorer(f"127.0.0.1:{srv.port}", timeout_s=2.0)
        priorities = scorer.score(nodes, pod)
    assert len(priorities) == 3 and all(0 <= p <= 10 for p in priorities)
    assert max(priorities) == 10  # scaled to the extender's range
    assert priorities[1] > priorities[0]  # an idle fast GPU beats a nearly full one


def test_scorer_raises_temporary_when_the_server_is_gone() -> None:
    import pytest

    from ecrl.errors import Temporary

    scorer = PolicyServerScorer("127.0.0.1:9", timeout_s=0.3)  # nothing listens on port 9
    with pytest.raises(Temporary):
        scorer.score([node("a", 4, 1.0)], PodRequest(cpu_cores=1.0, memory_bytes=2**30))


def test_prebuilt_request_path_gives_the_policy_client_answers() -> None:
    """``score_table`` (per-snapshot protobuf messages, priorities read straight off the
    reply) answers exactly like ``PolicyClient.score_nodes`` through :meth:`score`."""
    import pytest

    from ecrl.errors import Temporary
    from services.scheduler_extender.cache import build_snapshot
    from services.scheduler_extender.scoring import priority_scores
    from services.scheduler_extender.wire import parse_pod
    from tests.unit.test_extender_wire import k8s_node, k8s_pod

    nodes = [
        k8s_node(f"n{i}", gpus=1 + i % 4, cpu=str(8 + i % 5), memory=f"{16 + 2 * (i % 3)}Gi")
        for i in range(12)
    ]
    nodes.append(k8s_node("cpu-only", gpus=None))
    pods = [k8s_pod(f"r{i}", node=f"n{i % 5}", cpu="2", memory="4Gi") for i in range(6)]
    pods.append(k8s_pod("new", node="n7", cpu="2", memory="4Gi", uid="uid-new"))
    snap = build_snapshot(nodes, pods, 0.0)
    pod = parse_pod(k8s_pod("new", cpu="2", memory="4Gi", uid="uid-new"))
    names = [*(f"n{i}" for i in range(12)), "cpu-only"]

    class PerNode:  # no score_table: NodeStates through PolicyClient.score_nodes
        def __init__(self, inner: PolicyServerScorer) -> None:
            self.inner, self.name = inner, inner.name

        def score(self, nodes, pod):
            return self.inner.score(nodes, pod)

    with scorer_server() as srv:
        scorer = PolicyServerScorer(f"127.0.0.1:{srv.port}", timeout_s=2.0)
        fast = priority_scores(snap, pod, names, scorer)
        again = priority_scores(snap, pod, names, scorer)  # the memoized messages
        assert scorer._request_parts is not None  # the prebuilt-request path was taken
        slow = priority_scores(snap, pod, names, PerNode(scorer))
        refusals = []
        for s in (scorer, PerNode(scorer)):  # the server refuses a node listed twice
            with pytest.raises(Temporary) as exc:
                priority_scores(snap, pod, [*names, "n3"], s)
            refusals.append(str(exc.value))
    assert fast == again == slow
    assert refusals[0] == refusals[1] and "appears twice" in refusals[0]
    assert fast[12] == 0 and max(fast) == 10 and len(set(fast)) > 2
