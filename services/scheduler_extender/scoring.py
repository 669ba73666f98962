"""Who scores the candidate nodes: a pluggable :class:`Scorer` returning priorities 0–10.

- :class:`LocalScorer` (default): an in-process :class:`ecrl.placement.NodeScorer`
  (:class:`~ecrl.placement.KubeDefaultScorer` unless told otherwise), min-max scaled by
  :func:`ecrl.placement.extender_priorities`.
- :class:`PolicyServerScorer`: asks the policy server's ``ScoreNodes`` over gRPC through
  ``services.policy_server.client.PolicyClient``, imported lazily so that the extender runs
  without that package; when it cannot be imported or called, the request fails open.

:func:`prioritize` builds the per-candidate :class:`~ecrl.placement.NodeState` from the
snapshot and maps the scorer's answer onto the candidates.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from ecrl.errors import Permanent, Temporary
from ecrl.placement import (
    MAX_EXTENDER_PRIORITY,
    KubeDefaultScorer,
    NodeScorer,
    NodeState,
    PodRequest,
    extender_priorities,
)
from services.scheduler_extender.gpu import ClusterSnapshot, node_state, pod_request
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


def _import_policy_client() -> Callable[[str, float], object]:
    from services.policy_server.client import PolicyClient

    return PolicyClient


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

    def _get_client(self):
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
            return self._client

    def score(self, nodes: list[NodeState], pod: PodRequest) -> list[int]:
        client = self._get_client()
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


def prioritize(
    snapshot: ClusterSnapshot, pod: Pod, node_names: Sequence[str], scorer: Scorer
) -> list[HostPriority]:
    """Score the candidates; a node without a GPU (only there if filtering failed open) gets 0.

    A pod without a GPU request gets neutral scores without asking the scorer: the default
    plugins place it. A candidate the snapshot does not know yet (a node that joined since
    the last list) raises Temporary: scoring the others alone would rank the newcomer last,
    so the caller fails open with neutral scores instead.
    """
    if pod.gpu_slots <= 0 or not node_names:
        return [HostPriority(n, NEUTRAL_PRIORITY) for n in node_names]
    unknown = [n for n in node_names if n not in snapshot.nodes]
    if unknown:
        raise Temporary(f"nodes not in the cluster cache yet: {', '.join(unknown[:5])}")
    states = [node_state(snapshot, n, pod) for n in node_names]
    known = [s for s in states if s is not None]
    scores: dict[str, int] = {}
    if known:
        priorities = scorer.score(known, pod_request(pod))
        if len(priorities) != len(known):
            raise Temporary(f"scorer {scorer.name}: {len(priorities)} scores for {len(known)}")
        for s, p in zip(known, priorities, strict=True):
            scores[s.name] = min(max(int(p), 0), MAX_EXTENDER_PRIORITY)
    return [HostPriority(n, scores.get(n, NEUTRAL_PRIORITY)) for n in node_names]
