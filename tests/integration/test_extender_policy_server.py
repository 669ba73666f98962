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


def test_prioritize_scores_come_from_the_policy_servers_scorer() -> None:
    config = ServerConfig(
        policy_path=builtin_policy_path(),
        scorer_path=str(SCORER),
        listen="127.0.0.1:0",
        metrics_listen=None,
        reload_interval_s=0,
    )
    nodes = [node("busy", 1, 1.0), node("idle-fast", 4, 1.7), node("idle-slow", 4, 0.5)]
    pod = PodRequest(cpu_cores=2.0, memory_bytes=4 * 2**30)
    with PolicyServer(config) as srv:
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
