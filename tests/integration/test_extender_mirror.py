"""The extender's in-process mirror of the policy server's scorer, against a real policy server
over gRPC: the same priorities as ScoreNodes node for node, only while the versions match,
the policy server again once they differ, and the last confirmed version while it is down."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from prometheus_client import CollectorRegistry

from ecrl.errors import Temporary
from ecrl.placement import NodeColumns
from services.policy_server.config import ServerConfig
from services.policy_server.server import PolicyServer
from services.scheduler_extender.cache import build_snapshot
from services.scheduler_extender.gpu import ClusterSnapshot, pod_request
from services.scheduler_extender.mirror import (
    MirroredScorer,
    Where,
    _local_of,
    _local_table,
)
from services.scheduler_extender.scoring import PolicyServerScorer, priority_scores
from services.scheduler_extender.wire import Pod, parse_pod
from tests.integration.test_extender_policy_server import SCORER
from tests.unit.test_extender_wire import k8s_node, k8s_pod


def server(scorer_path: str | None) -> PolicyServer:
    return PolicyServer(
        ServerConfig(
            scorer_path=scorer_path,
            listen="127.0.0.1:0",
            metrics_listen=None,
            reload_interval_s=0,  # the tests poll the store themselves
        )
    )


def mirror_of(srv: PolicyServer, local: str | None, timeout_s: float = 2.0) -> MirroredScorer:
    remote = PolicyServerScorer(f"127.0.0.1:{srv.port}", timeout_s=timeout_s)
    return MirroredScorer(remote, local, sync_interval_s=60, registry=CollectorRegistry())


def cluster(rng: random.Random) -> tuple[ClusterSnapshot, Pod, list[str]]:
    """A random cluster, a pending GPU pod and its candidates (some CPU-only, sometimes one
    already counting the pod, as the scheduler's own retries see it, or one listed twice)."""
    n = rng.randint(1, 40)
    nodes = [
        k8s_node(
            f"n{i}",
            gpus=rng.choice([None, 1, 2, 4, 8]) if i else 4,
            cpu=str(rng.randint(2, 64)),
            memory=f"{rng.randint(4, 256)}Gi",
            speed=rng.choice([None, "0.5", "1.0", "1.7"]),
        )
        for i in range(n)
    ]
    cpu, mem = rng.choice(["500m", "1", "2", "4"]), rng.choice(["512Mi", "2Gi", "4Gi"])
    pods = [
        k8s_pod(f"r{j}", node=f"n{rng.randrange(n)}", cpu=cpu, memory=mem, gpus=rng.randint(0, 2))
        for j in range(rng.randint(0, 3 * n))
    ]
    if rng.random() < 0.3:
        pods.append(k8s_pod("new", node=f"n{rng.randrange(n)}", cpu=cpu, memory=mem, uid="u-new"))
    snap = build_snapshot(nodes, pods, 0.0)
    pod = parse_pod(k8s_pod("new", cpu=cpu, memory=mem, uid="u-new"))
    names = rng.sample([f"n{i}" for i in range(n)], rng.randint(1, n))
    if rng.random() < 0.05:  # listed twice: the policy server refuses, so the mirror defers
        names.append(names[0])
    return snap, pod, names


def assert_same_answer(snap: ClusterSnapshot, pod: Pod, names: list[str], mirror) -> bool:
    """The mirror's priorities are the policy server's; or both refuse (False then)."""
    try:
        want = priority_scores(snap, pod, names, mirror.remote)
    except Temporary:  # the server refuses it: so must the mirror (through the server)
        with pytest.raises(Temporary):
            priority_scores(snap, pod, names, mirror)
        return False
    assert priority_scores(snap, pod, names, mirror) == want
    return True


def routed(mirror: MirroredScorer) -> dict[str, float]:
    return {
        s.labels["where"]: s.value
        for m in mirror.metrics.routed.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }


def test_in_process_priorities_equal_score_nodes_over_grpc() -> None:
    rng = random.Random(20261130)
    with server(str(SCORER)) as srv:
        mirror = mirror_of(srv, str(SCORER))
        first = mirror.sync()
        assert first.where is Where.LEARNED
        assert first.local_version == first.server_version != ""
        compared = sum(assert_same_answer(*cluster(rng), mirror) for _ in range(300))
    assert compared > 250
    counts = routed(mirror)
    assert counts["in-process-learned"] >= 0.9 * compared  # answered here, not asked
    assert counts["policy-server"] <= 0.1 * compared


def test_kube_default_on_the_server_is_answered_in_process_alike() -> None:
    rng = random.Random(7)
    with server(None) as srv:  # no scorer: the server answers with the default scheduler's
        mirror = mirror_of(srv, str(SCORER))
        assert mirror.sync().where is Where.KUBE_DEFAULT
        for _ in range(100):
            snap, pod, names = cluster(rng)
            assert_same_answer(snap, pod, names, mirror)
    assert routed(mirror)["in-process-kube-default"] >= 85


def _variant(path: Path) -> Path:
    """The packaged scorer with another doc string: valid, same answers, another version."""
    model = onnx.load(str(SCORER))
    model.doc_string = "a retrained scorer (test)"
    onnx.save(model, str(path))
    return path


def test_a_version_swap_on_the_server_sends_requests_to_it(tmp_path: Path) -> None:
    served = tmp_path / "served.onnx"
    shutil.copyfile(SCORER, served)
    snap, pod, names = cluster(random.Random(3))
    with server(str(served)) as srv:
        mirror = mirror_of(srv, str(SCORER))
        assert mirror.sync().where is Where.LEARNED
        _variant(tmp_path / "next.onnx").replace(served)  # the server hot-reloads another file
        assert srv.store.scorer.poll() == "loaded"
        after = mirror.sync()
        assert after.where is Where.POLICY_SERVER
        assert after.server_version != after.local_version
        before = routed(mirror)["policy-server"]
        priority_scores(snap, pod, names, mirror)
        assert routed(mirror)["policy-server"] == before + 1
        # the extender's own file catches up (same bytes): in-process again
        shutil.copyfile(served, tmp_path / "local.onnx")
        mirror.local.path = str(tmp_path / "local.onnx")
        assert mirror.sync().where is Where.LEARNED


def test_no_local_file_means_every_request_asks_the_server(tmp_path: Path) -> None:
    with server(str(SCORER)) as srv:
        mirror = mirror_of(srv, str(tmp_path / "missing.onnx"))
        sync = mirror.sync()
    assert sync.where is Where.POLICY_SERVER and sync.local_version == ""


def test_server_down_keeps_the_last_confirmed_version_and_never_confirms_a_new_one() -> None:
    snap, pod, names = cluster(random.Random(11))
    with server(str(SCORER)) as srv:
        mirror = mirror_of(srv, str(SCORER), timeout_s=0.3)
        never = mirror_of(srv, str(SCORER), timeout_s=0.3)  # not synced before the stop
        assert mirror.sync().where is Where.LEARNED
        want = priority_scores(snap, pod, names, mirror.remote)
    down = mirror.sync()
    assert down.where is Where.LEARNED and down.server_version == "" and down.error
    assert priority_scores(snap, pod, names, mirror) == want  # the policy's scores, not neutral
    assert never.sync().where is Where.POLICY_SERVER
    with pytest.raises(Temporary):  # ... so that one fails open, as without the mirror
        priority_scores(snap, pod, names, never)


def test_sync_thread_follows_and_stops() -> None:
    with server(None) as srv:
        remote = PolicyServerScorer(f"127.0.0.1:{srv.port}", timeout_s=2.0)
        mirror = MirroredScorer(remote, str(SCORER), 0.1, CollectorRegistry())
        mirror.start()
        try:
            for _ in range(100):  # bounded: ~10 s
                if mirror.where is Where.KUBE_DEFAULT:
                    break
                time.sleep(0.1)
            assert mirror.where is Where.KUBE_DEFAULT
        finally:
            mirror.stop()
    assert not mirror._thread.is_alive()


class Recorder:
    """A scorer double that keeps every feature matrix it is given."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def score_features(self, x: np.ndarray) -> np.ndarray:
        self.seen.append(x.copy())
        return x.astype(float).sum(axis=1)


def test_memoized_table_gives_bit_identical_features_and_the_same_checks() -> None:
    """The per-snapshot halves (features of each node alone, per-node checks) then the mean
    over the candidates: the graph sees exactly the matrix ScoreNodes' own code builds."""
    rng = random.Random(99)
    compared = 0
    for _ in range(400):
        snap, pod, names = cluster(rng)
        rows = snap.table.rows(names)
        states = snap.table.node_states(snap, names, rows, pod)
        known = [s for s in states if s is not None]
        if not known:
            continue
        fast, slow = Recorder(), Recorder()
        got = _local_table((Where.LEARNED, fast), snap, names, rows, pod)
        known_names, direct = _local_of(
            (Where.LEARNED, slow), NodeColumns.of(known), pod_request(pod)
        )
        want = None
        if direct is not None:
            by_name = dict(zip(known_names, direct, strict=True))
            want = [by_name.get(n, 0) for n in names]
        assert got == want
        assert len(fast.seen) == len(slow.seen)
        for a, b in zip(fast.seen, slow.seen, strict=True):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
        compared += len(fast.seen)
    assert compared > 300
