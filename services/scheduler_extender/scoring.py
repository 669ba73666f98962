"""Who scores the candidate nodes: a pluggable :class:`Scorer` returning priorities 0–10.

- :class:`LocalScorer` (default): an in-process :class:`ecrl.placement.NodeScorer`
  (:class:`~ecrl.placement.KubeDefaultScorer` unless told otherwise), min-max scaled by
  :func:`ecrl.placement.extender_priorities`.
- :class:`PolicyServerScorer`: asks the policy server's ``ScoreNodes`` over gRPC through
  ``services.policy_server.client.PolicyClient``, imported lazily so that the extender runs
  without that package; when it cannot be imported or called, the request fails open.

:func:`prioritize` builds the per-candidate :class:`~ecrl.placement.NodeState` from the
snapshot and maps the scorer's answer onto the candidates.

Speed (issue 5: ``/prioritize`` for 100 nodes, p99 ≤ 3 ms over HTTP): the per-node work that
does not depend on the pod is done when the cache builds its snapshot
(:class:`~services.scheduler_extender.gpu.NodeTable`); :class:`LocalScorer` with the default
scheduler's scores computes them for all candidates at once in numpy
(:func:`kube_default_priorities`, integer for integer the upstream arithmetic of
:mod:`ecrl.placement`, checked against it by tests); any other scorer gets the per-node
:class:`~ecrl.placement.NodeState` objects, memoized per snapshot.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from ecrl.errors import Permanent, Temporary
from ecrl.placement import (
    MAX_EXTENDER_PRIORITY,
    NODE_SCHEMA_VERSION,
    KubeDefaultScorer,
    NodeScorer,
    NodeState,
    PodRequest,
    extender_priorities,
    extender_priority_array,
    kube_plugin_scores,
)
from services.scheduler_extender.gpu import ClusterSnapshot, NodeTable, pod_request
from services.scheduler_extender.wire import HostPriority, Pod

log = logging.getLogger("ecrl.extender.scoring")

NEUTRAL_PRIORITY = 0
"""Fail-open score: 0 for every node adds nothing, so the default plugins alone decide."""


class Scorer(Protocol):
    """Priorities 0–10 (MaxExtenderPriority) for ``nodes``, in order; higher is better."""

    name: str

    def score(self, nodes: list[NodeState], pod: PodRequest) -> list[int]: ...


class LocalScorer:
    """An in-process node scorer (default: the default scheduler's resource scores)."""

    def __init__(self, node_scorer: NodeScorer | None = None) -> None:
        self.node_scorer = node_scorer if node_scorer is not None else KubeDefaultScorer()
        self.name = f"local:{self.node_scorer.name}"

    def score(self, nodes: list[NodeState], pod: PodRequest) -> list[int]:
        return extender_priorities(self.node_scorer.score(nodes, pod))

    def score_table(
        self, snapshot: ClusterSnapshot, node_names: Sequence[str], rows: list[int], pod: Pod
    ) -> list[int] | None:
        """All candidates' priorities at once, or None: then :meth:`score` per NodeState."""
        plugins = _vectorizable_plugins(self.node_scorer)
        if plugins is None:
            return None
        return kube_default_priorities(snapshot.table, rows, pod, plugins)


_PLUGINS = ("least-allocated", "balanced-allocation")


def _vectorizable_plugins(scorer: NodeScorer) -> tuple[str, ...] | None:
    if type(scorer) is not KubeDefaultScorer or not all(p in _PLUGINS for p in scorer.plugins):
        return None
    return scorer.plugins


def kube_default_priorities(
    table: NodeTable, rows: Sequence[int], pod: Pod, plugins: tuple[str, ...] = _PLUGINS
) -> list[int] | None:
    """The default scheduler's scores for every candidate row, as extender priorities.

    Identical, node for node, to ``extender_priorities(KubeDefaultScorer(plugins).score(...))``
    over the candidates' :func:`~services.scheduler_extender.gpu.node_state`; a candidate
    without a state gets 0. None when :func:`kube_default_scores` declines.
    """
    idx = np.fromiter(rows, dtype=np.intp, count=len(rows))
    k = np.flatnonzero(table.scorable[idx])
    out = np.zeros(len(idx), dtype=np.int64)
    if len(k) == 0:
        return out.tolist()
    raw = kube_default_scores(table, idx[k], pod, plugins)
    if raw is None:
        return None
    out[k] = extender_priority_array(raw)
    return out.tolist()


def kube_default_scores(
    table: NodeTable, sel: np.ndarray, pod: Pod, plugins: tuple[str, ...] = _PLUGINS
) -> np.ndarray | None:
    """``KubeDefaultScorer(plugins).score`` of the scorable rows ``sel``, all at once.

    ``ecrl.placement`` reproduces upstream's Go integer arithmetic node by node; this does
    the same operations on int64/float64 arrays, so the scores are equal, not just close.
    Returns None — the caller then takes the per-node path, which also raises what it would
    raise — for inputs outside that exact range or ones ``check_nodes`` would refuse.
    """
    cpu_used, mem_used = table.cpu_used[sel], table.mem_used[sel]
    own = table.own_rows(pod)
    if own:  # the pod itself already counted there: subtract it, as node_usage does
        for j, i in enumerate(sel.tolist()):
            if i in own:
                cpu_used[j] -= pod.cpu_cores
                mem_used[j] -= pod.memory_bytes
    if not (
        pod.cpu_cores >= 0
        and pod.memory_bytes >= 0
        and (cpu_used >= 0).all()
        and (mem_used >= 0).all()
    ):
        return None  # check_nodes refuses these; let the per-node path say so
    plugin = kube_plugin_scores(
        cpu_used, table.cpu_alloc[sel], mem_used, table.mem_alloc[sel], pod_request(pod)
    )
    if plugin is None:
        return None
    return sum((plugin[p] for p in plugins), np.zeros(len(sel), np.int64)).astype(np.float64)


def _import_policy_client() -> Callable[[str, float], object]:
    from services.policy_server.client import PolicyClient

    return PolicyClient


def _import_score_request_parts() -> tuple | None:
    """(node → message, request class, grpc.RpcError, RpcError → PolicyClient's error)."""
    try:
        import grpc

        from ecrl.v1 import policy_pb2
        from services.policy_server import client, convert
    except ImportError:
        return None
    return convert.node_message, policy_pb2.ScoreNodesRequest, grpc.RpcError, client._error


MESSAGE_MEMO = "policy-server-node-messages"
"""Key of the per-snapshot memo of ``NodeState`` protobuf messages (NodeTable.scratch)."""


class PolicyServerScorer:
    """Scores through the policy server (``PolicyClient(target, timeout_s).score_nodes``).

    The client is imported and built on first use. An import failure is logged once and every
    call then raises :class:`~ecrl.errors.Permanent`; a failing or malformed reply raises
    :class:`~ecrl.errors.Temporary`. The extender turns both into neutral scores (fail open).
    ``score_nodes(nodes, pod)`` returns the policy server's ``NodeScores`` (request order):
    its ``priorities`` (already 0–10) are used as they are; a reply with only raw ``scores``
    (or a bare sequence of them) is min-max scaled here.
    """

    def __init__(
        self,
        target: str,
        timeout_s: float,
        client_factory: Callable[[], Callable[[str, float], object]] = _import_policy_client,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.name = f"policy-server:{target}"
        self._client_factory = client_factory
        self._client: object | None = None
        self._import_error: str | None = None
        self._lock = threading.Lock()
        self._request_parts: tuple | None = None
        """Set on first use when the client is the real ``PolicyClient`` (it has ``stub``)."""

    def client(self):
        """The PolicyClient (built on first use); Permanent when it cannot be imported."""
        with self._lock:
            if self._client is None and self._import_error is None:
                try:
                    self._client = self._client_factory()(self.target, self.timeout_s)
                except ImportError as exc:
                    self._import_error = f"{type(exc).__name__}: {exc}"
                    log.error(
                        "policy server client unavailable; prioritize fails open (neutral scores)",
                        extra={"target": self.target, "error": self._import_error},
                    )
            if self._client is None:
                raise Permanent(f"policy server client unavailable: {self._import_error}")
            if self._request_parts is None and hasattr(self._client, "stub"):
                self._request_parts = _import_score_request_parts()
            return self._client

    def score(self, nodes: list[NodeState], pod: PodRequest) -> list[int]:
        client = self.client()
        try:
            reply = client.score_nodes(nodes, pod)  # type: ignore[attr-defined]
        except Exception as exc:  # deadline, UNAVAILABLE, schema mismatch: all fail open
            raise Temporary(f"policy server {self.target}: {type(exc).__name__}: {exc}") from exc
        priorities = getattr(reply, "priorities", None)
        raw = list(priorities if priorities is not None else getattr(reply, "scores", reply))
        if len(raw) != len(nodes) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in raw
        ):
            raise Temporary(
                f"policy server {self.target}: {len(raw)} scores for {len(nodes)} nodes "
                "or a non-numeric score"
            )
        if priorities is not None:
            return [min(max(round(v), 0), MAX_EXTENDER_PRIORITY) for v in raw]
        return extender_priorities(raw)

    def score_table(
        self, snapshot: ClusterSnapshot, node_names: Sequence[str], rows: list[int], pod: Pod
    ) -> list[int] | None:
        """``ScoreNodes`` with a request built from per-snapshot protobuf messages.

        What ``PolicyClient.score_nodes`` sends and :meth:`score` does with the answer, minus
        its per-call conversions: each candidate's ``NodeState`` message is made once per
        snapshot (``convert.node_message`` of the memoized state), and only the priorities
        are read back. None (then :meth:`score`) when the client is not a ``PolicyClient``.
        """
        client = self.client()
        parts = self._request_parts
        if parts is None:
            return None
        node_message, request_class, rpc_error, client_error = parts
        table = snapshot.table
        states = table.node_states(snapshot, node_names, rows, pod)
        known = [s for s in states if s is not None]
        if not known:
            return [NEUTRAL_PRIORITY] * len(node_names)
        memo = table.scratch.setdefault(MESSAGE_MEMO, {})
        if len(memo) > 2 * len(table.names) + 256:  # per-pod states of the nodes that count it
            memo.clear()
        messages = []
        for state in known:
            hit = memo.get(id(state))
            if hit is None or hit[0] is not state:  # (state, message): the id stays its own
                hit = memo[id(state)] = (state, node_message(state))
            messages.append(hit[1])
        request = request_class(
            node_schema_version=NODE_SCHEMA_VERSION,
            pod_cpu_cores=pod.cpu_cores,
            pod_memory_bytes=pod.memory_bytes,
            nodes=messages,
        )
        stub = client.stub  # type: ignore[attr-defined]
        try:
            try:
                response = stub.ScoreNodes(request, timeout=client.timeout_s)  # type: ignore[attr-defined]
            except rpc_error as exc:
                raise client_error(exc) from exc  # what PolicyClient raises
        except Exception as exc:  # deadline, UNAVAILABLE, schema mismatch: all fail open
            raise Temporary(f"policy server {self.target}: {type(exc).__name__}: {exc}") from exc
        raw = [s.priority for s in response.scores]
        if len(raw) != len(known):
            raise Temporary(
                f"policy server {self.target}: {len(raw)} scores for {len(known)} nodes "
                "or a non-numeric score"
            )
        scores: dict[str, int] = {}
        for state, p in zip(known, raw, strict=True):
            scores[state.name] = min(max(p, 0), MAX_EXTENDER_PRIORITY)
        return [scores.get(n, NEUTRAL_PRIORITY) for n in node_names]


def prioritize(
    snapshot: ClusterSnapshot, pod: Pod, node_names: Sequence[str], scorer: Scorer
) -> list[HostPriority]:
    """Score the candidates; a node without a GPU (only there if filtering failed open) gets 0.

    A pod without a GPU request gets neutral scores without asking the scorer: the default
    plugins place it. A candidate the snapshot does not know yet (a node that joined since
    the last list) raises Temporary: scoring the others alone would rank the newcomer last,
    so the caller fails open with neutral scores instead.
    """
    scores = priority_scores(snapshot, pod, node_names, scorer)
    return [HostPriority(n, s) for n, s in zip(node_names, scores, strict=True)]


def priority_scores(
    snapshot: ClusterSnapshot, pod: Pod, node_names: Sequence[str], scorer: Scorer
) -> list[int]:
    """:func:`prioritize`'s scores alone, in candidate order (what the HTTP layer sends)."""
    if pod.gpu_slots <= 0 or not node_names:
        return [NEUTRAL_PRIORITY] * len(node_names)
    table = snapshot.table
    rows = table.rows(node_names)  # Temporary for a node the cache has not listed yet
    score_table = getattr(scorer, "score_table", None)
    if score_table is not None:
        fast = score_table(snapshot, node_names, rows, pod)
        if fast is not None:
            return fast
    states = table.node_states(snapshot, node_names, rows, pod)
    known = [s for s in states if s is not None]
    if not known:
        return [NEUTRAL_PRIORITY] * len(node_names)
    priorities = scorer.score(known, pod_request(pod))
    if len(priorities) != len(known):
        raise Temporary(f"scorer {scorer.name}: {len(priorities)} scores for {len(known)}")
    scores: dict[str, int] = {}
    for s, p in zip(known, priorities, strict=True):
        scores[s.name] = min(max(int(p), 0), MAX_EXTENDER_PRIORITY)
    return [scores.get(n, NEUTRAL_PRIORITY) for n in node_names]
