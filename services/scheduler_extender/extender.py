"""The extender's verbs without HTTP: filter, prioritize and bind over a cluster view.

Each verb returns a :class:`Handled` (the result plus an outcome label) and never raises for
an internal failure: ``filter`` then passes every candidate and ``prioritize`` gives neutral
scores (fail open, DESIGN.md's safety envelope), so a broken extender can only cost placement
quality, never schedulability. Filter and prioritize only read; only bind writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from services.scheduler_extender.cache import ClusterView
from services.scheduler_extender.gpu import filter_nodes
from services.scheduler_extender.scoring import NEUTRAL_PRIORITY, Scorer, priority_scores
from services.scheduler_extender.wire import (
    BindingArgs,
    ExtenderArgs,
    FilterResult,
    HostPriority,
)

T = TypeVar("T")

OK = "ok"
PASSTHROUGH = "passthrough"
"""The pod requests no nvidia.com/gpu: nodes and scores untouched."""
FAIL_OPEN = "fail_open"
ERROR = "error"
"""Bind failed (bind cannot fail open: the scheduler retries the pod)."""
INVALID = "invalid"
"""Malformed request (HTTP 400); used by the HTTP layer."""


class Binder(Protocol):
    """Writes the pod → node binding (raises on failure)."""

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None: ...


@dataclass(frozen=True)
class Handled(Generic[T]):
    """A verb's answer and how it was reached (``reason`` says why it failed open)."""

    result: T
    outcome: str
    reason: str = ""


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class Extender:
    """Filter / prioritize / bind for one pod at a time."""

    def __init__(self, view: ClusterView, scorer: Scorer, binder: Binder | None = None) -> None:
        self.view = view
        self.scorer = scorer
        self.binder = binder

    def filter(self, args: ExtenderArgs) -> Handled[FilterResult]:
        """Drop the nodes without enough free GPU slots; on any internal error keep them all."""
        if args.pod.gpu_slots <= 0:
            return Handled(FilterResult(args.node_names), PASSTHROUGH)
        try:
            return Handled(filter_nodes(self.view.snapshot(), args.pod, args.node_names), OK)
        except Exception as exc:  # fail open: the default plugins still check allocatable
            return Handled(FilterResult(args.node_names), FAIL_OPEN, _why(exc))

    def prioritize(self, args: ExtenderArgs) -> Handled[list[HostPriority]]:
        """Scores 0–10 from the scorer; on any internal error neutral 0 for every node."""
        handled = self.prioritize_scores(args)
        scores = handled.result
        priorities = [HostPriority(n, s) for n, s in zip(args.node_names, scores, strict=True)]
        return Handled(priorities, handled.outcome, handled.reason)

    def prioritize_scores(self, args: ExtenderArgs) -> Handled[list[int]]:
        """:meth:`prioritize`'s scores alone, in ``args.node_names`` order (the HTTP path)."""
        neutral = [NEUTRAL_PRIORITY] * len(args.node_names)
        if args.pod.gpu_slots <= 0:
            return Handled(neutral, PASSTHROUGH)
        try:
            snapshot = self.view.snapshot()
            return Handled(priority_scores(snapshot, args.pod, args.node_names, self.scorer), OK)
        except Exception as exc:  # fail open: neutral scores, the default plugins decide
            return Handled(neutral, FAIL_OPEN, _why(exc))

    def bind(self, args: BindingArgs) -> Handled[str]:
        """Bind through the API; the result is the error text ('' when bound)."""
        if self.binder is None:
            return Handled("bind: this extender has no Kubernetes client", ERROR)
        try:
            self.binder.bind(args.pod_namespace, args.pod_name, args.pod_uid, args.node)
        except Exception as exc:  # reported to the scheduler, which retries the pod
            return Handled(f"bind {args.pod_namespace}/{args.pod_name}: {_why(exc)}", ERROR)
        return Handled("", OK)
