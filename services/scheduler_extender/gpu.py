"""GPU slot accounting over a cluster snapshot: the extender's filter and its node view.

A node advertises ``nvidia.com/gpu`` as time-sliced slots (the GPU operator's time-slicing
replicas, e.g. 4 on the reference box's RTX 3080). A slot is taken by every non-terminal pod
bound to the node that requests it. Pure functions of plain data: the cache builds a
:class:`ClusterSnapshot`, the HTTP layer never touches these rules.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ecrl.errors import Temporary
from ecrl.placement import NodeState, PodRequest
from services.scheduler_extender.wire import GPU_RESOURCE, FilterResult, Pod

SPEED_ANNOTATION = "ecrl.io/gpu-speed"
"""Node annotation: GPU throughput relative to the calibrated card (as the emulator reads it)."""
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
"""Physical GPUs on the node (gpu-feature-discovery label)."""


@dataclass(frozen=True, slots=True)
class Node:
    """What the extender needs of a v1.Node."""

    name: str
    gpu_slots_total: int
    """Allocatable ``nvidia.com/gpu`` (time-sliced slots)."""
    gpu_count: int
    gpu_speed: float
    cpu_allocatable_cores: float
    memory_allocatable_bytes: float


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """Sums over the non-terminal pods bound to one node."""

    gpu_slots: int = 0
    cpu_cores: float = 0.0
    memory_bytes: float = 0.0
    apps: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """Pods per (app label, value)."""
    pod_uids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ClusterSnapshot:
    """An immutable view of nodes and bound pods, built in one go and swapped in whole."""

    nodes: Mapping[str, Node]
    usage: Mapping[str, NodeUsage]
    taken_at_s: float
    """Monotonic clock reading when the lists were taken."""

    @classmethod
    def build(cls, nodes: Iterable[Node], pods: Iterable[Pod], taken_at_s: float):
        """Index ``nodes`` and sum the requests of the non-terminal bound ``pods`` per node."""
        by_node: dict[str, list[Pod]] = {}
        for p in pods:
            if p.node_name and not p.terminal:
                by_node.setdefault(p.node_name, []).append(p)
        usage = {}
        for name, bound in by_node.items():
            apps: dict[tuple[str, str], int] = {}
            for p in bound:
                if p.app is not None:
                    apps[p.app] = apps.get(p.app, 0) + 1
            usage[name] = NodeUsage(
                gpu_slots=sum(p.gpu_slots for p in bound),
                cpu_cores=sum(p.cpu_cores for p in bound),
                memory_bytes=sum(p.memory_bytes for p in bound),
                apps=apps,
                pod_uids=frozenset(p.uid for p in bound if p.uid),
            )
        snap = cls(nodes={n.name: n for n in nodes}, usage=usage, taken_at_s=taken_at_s)
        _ = snap.table  # the per-node columns are built here (the cache thread), not per request
        return snap

    @cached_property
    def table(self) -> NodeTable:
        """Per-node columns for the request path (built once per snapshot)."""
        return NodeTable(self)

    def node_usage(self, name: str, pod: Pod) -> NodeUsage:
        """Usage of node ``name`` without ``pod`` itself (if it is already counted there)."""
        u = self.usage.get(name, NodeUsage())
        if pod.uid and pod.uid in u.pod_uids:
            app_counts = dict(u.apps)
            if pod.app is not None and app_counts.get(pod.app):
                app_counts[pod.app] -= 1
            u = NodeUsage(
                gpu_slots=u.gpu_slots - pod.gpu_slots,
                cpu_cores=u.cpu_cores - pod.cpu_cores,
                memory_bytes=u.memory_bytes - pod.memory_bytes,
                apps=app_counts,
                pod_uids=u.pod_uids - {pod.uid},
            )
        return u


_UNSET = object()
MAX_STATE_MEMOS = 64
"""Per-app NodeState memos kept per snapshot (a new snapshot every refresh starts empty)."""


class NodeTable:
    """A snapshot's nodes as rows: what every request needs, computed once per cluster list.

    The request path then only gathers the candidates' rows. Everything here is derived from
    the snapshot with the same arithmetic as :meth:`ClusterSnapshot.node_usage` and
    :func:`node_state`; the one per-pod correction — the pod being scheduled already counted
    on a node (``pod_uids``) — is applied per request to just those rows (:meth:`own_rows`).
    """

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        names = tuple(snapshot.nodes)
        empty = NodeUsage()
        nodes = [snapshot.nodes[n] for n in names]
        usage = [snapshot.usage.get(n, empty) for n in names]
        self.names = names
        self.row: dict[str, int] = {n: i for i, n in enumerate(names)}
        self.slots_total: list[int] = [n.gpu_slots_total for n in nodes]
        self.slots_used: list[int] = [u.gpu_slots for u in usage]
        self.cpu_alloc = np.array([n.cpu_allocatable_cores for n in nodes], dtype=np.float64)
        self.mem_alloc = np.array([n.memory_allocatable_bytes for n in nodes], dtype=np.float64)
        self.cpu_used = np.array([u.cpu_cores for u in usage], dtype=np.float64)
        self.mem_used = np.array([u.memory_bytes for u in usage], dtype=np.float64)
        self.scorable = (
            (np.array(self.slots_total, dtype=np.float64) > 0)
            & (self.cpu_alloc > 0)
            & (self.mem_alloc > 0)
        )
        """Rows :func:`node_state` gives a state for (a GPU, CPU and memory)."""
        uid_rows: dict[str, set[int]] = {}
        for i, u in enumerate(usage):
            for uid in u.pod_uids:
                uid_rows.setdefault(uid, set()).add(i)
        self._uid_rows = {uid: frozenset(r) for uid, r in uid_rows.items()}
        self._states: dict[tuple[str, str] | None, list] = {}
        self.scratch: dict[str, dict] = {}
        """Per-snapshot memos of scorers (e.g. the policy server's request messages)."""

    def rows(self, node_names: Sequence[str]) -> list[int]:
        """Row of each candidate; Temporary names the ones this snapshot does not know."""
        row = self.row
        try:
            return [row[n] for n in node_names]
        except KeyError:
            unknown = [n for n in node_names if n not in row]
            raise Temporary(
                f"nodes not in the cluster cache yet: {', '.join(unknown[:5])}"
            ) from None

    def own_rows(self, pod: Pod) -> frozenset[int]:
        """Rows whose usage already counts ``pod`` (bound there in the snapshot)."""
        return self._uid_rows.get(pod.uid, frozenset()) if pod.uid else frozenset()

    def free_slots(self, i: int, pod: Pod, own: frozenset[int]) -> int:
        used = self.slots_used[i] - pod.gpu_slots if i in own else self.slots_used[i]
        return max(self.slots_total[i] - used, 0)

    def node_states(
        self, snapshot: ClusterSnapshot, node_names: Sequence[str], rows: Sequence[int], pod: Pod
    ) -> list[NodeState | None]:
        """:func:`node_state` of each candidate, memoized per (snapshot, pod app).

        A state depends on the pod only through its app label (replicas) and, on the nodes
        that already count it, its own requests: those few are computed afresh.
        """
        memo = self._states.get(pod.app)
        if memo is None:
            memo = [_UNSET] * len(self.names)
            if len(self._states) < MAX_STATE_MEMOS:
                self._states[pod.app] = memo
        own = self.own_rows(pod)
        anonymous: Pod | None = None
        out: list[NodeState | None] = []
        for i, name in zip(rows, node_names, strict=True):
            if i in own:
                out.append(node_state(snapshot, name, pod))
                continue
            state = memo[i]
            if state is _UNSET:
                if anonymous is None:  # the same pod minus its uid: nothing to subtract
                    anonymous = dataclasses.replace(pod, uid="")
                state = memo[i] = node_state(snapshot, name, anonymous)
            out.append(state)
        return out


def free_slots(snapshot: ClusterSnapshot, name: str, pod: Pod) -> int:
    node = snapshot.nodes[name]
    return max(node.gpu_slots_total - snapshot.node_usage(name, pod).gpu_slots, 0)


def filter_nodes(snapshot: ClusterSnapshot, pod: Pod, node_names: Sequence[str]) -> FilterResult:
    """Keep the nodes with at least ``pod.gpu_slots`` free slots; say why the others fail.

    A pod without a GPU request passes untouched. A node the snapshot does not know yet (just
    registered) passes: kube-scheduler's own NodeResourcesFit still checks its allocatable.
    A node with fewer slots in total than requested is unresolvable (preemption cannot help).
    """
    need = pod.gpu_slots
    if need <= 0:
        return FilterResult(tuple(node_names))
    table = snapshot.table
    row, totals, own = table.row, table.slots_total, table.own_rows(pod)
    passed, failed, unresolvable = [], {}, {}
    for name in node_names:
        i = row.get(name)
        if i is None:
            passed.append(name)
            continue
        total = totals[i]
        if total <= 0:
            unresolvable[name] = f"{GPU_RESOURCE}: {need} requested, node has no GPU"
        elif total < need:
            unresolvable[name] = (
                f"{GPU_RESOURCE}: {need} requested, node has only {total} time-sliced slots"
            )
        elif (free := table.free_slots(i, pod, own)) < need:
            failed[name] = (
                f"{GPU_RESOURCE}: {need} requested, {free} of {total} time-sliced slots free"
            )
        else:
            passed.append(name)
    return FilterResult(tuple(passed), failed, unresolvable)


def node_state(snapshot: ClusterSnapshot, name: str, pod: Pod) -> NodeState | None:
    """The scorer's view of candidate ``name``; None if unknown or it has no GPU or CPU/memory.

    ``gpu_util_ratio`` stays None: only a collector measures it (never invented here).
    ``vram_free_ratio`` is the free share of time-sliced slots: each slot holds one model
    copy, so slot occupancy is the VRAM occupancy the scheduler can know about.
    """
    node = snapshot.nodes.get(name)
    if node is None or node.gpu_slots_total <= 0:
        return None
    if not (node.cpu_allocatable_cores > 0 and node.memory_allocatable_bytes > 0):
        return None
    u = snapshot.node_usage(name, pod)
    free = max(node.gpu_slots_total - u.gpu_slots, 0)
    return NodeState(
        name=name,
        gpu_count=node.gpu_count,
        gpu_slots_total=node.gpu_slots_total,
        gpu_slots_free=free,
        gpu_speed=node.gpu_speed,
        gpu_util_ratio=None,
        vram_free_ratio=free / node.gpu_slots_total,
        cpu_allocatable_cores=node.cpu_allocatable_cores,
        cpu_requested_cores=u.cpu_cores,
        memory_allocatable_bytes=node.memory_allocatable_bytes,
        memory_requested_bytes=u.memory_bytes,
        replicas=u.apps.get(pod.app, 0) if pod.app is not None else 0,
    )


def pod_request(pod: Pod) -> PodRequest:
    return PodRequest(cpu_cores=pod.cpu_cores, memory_bytes=pod.memory_bytes)


def gpu_speed(annotations: Mapping[str, object]) -> float:
    """``ecrl.io/gpu-speed`` as a positive finite float; 1.0 when absent or unreadable."""
    raw = annotations.get(SPEED_ANNOTATION)
    try:
        speed = float(raw) if isinstance(raw, str) else 1.0
    except ValueError:
        return 1.0
    return speed if math.isfinite(speed) and speed > 0 else 1.0
