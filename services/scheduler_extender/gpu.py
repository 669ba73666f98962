"""GPU slot accounting over a cluster snapshot: the extender's filter and its node view.

A node advertises ``nvidia.com/gpu`` as time-sliced slots (the GPU operator's time-slicing
replicas, e.g. 4 on the reference box's RTX 3080). A slot is taken by every non-terminal pod
bound to the node that requests it. Pure functions of plain data: the cache builds a
:class:`ClusterSnapshot`, the HTTP layer never touches these rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

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
        return cls(
            nodes={n.name: n for n in nodes},
            usage=usage,
            taken_at_s=taken_at_s,
        )

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
    passed, failed, unresolvable = [], {}, {}
    for name in node_names:
        node = snapshot.nodes.get(name)
        if node is None:
            passed.append(name)
            continue
        total = node.gpu_slots_total
        if total <= 0:
            unresolvable[name] = f"{GPU_RESOURCE}: {need} requested, node has no GPU"
        elif total < need:
            unresolvable[name] = (
                f"{GPU_RESOURCE}: {need} requested, node has only {total} time-sliced slots"
            )
        elif (free := free_slots(snapshot, name, pod)) < need:
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
