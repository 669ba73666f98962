"""The extender's view of the cluster: nodes and bound pods, and the re-listing cache.

Because the scheduler is ``nodeCacheCapable`` it sends only node names; GPU allocatable and
what is already requested come from here.

Two caches hand out the same immutable
:class:`~services.scheduler_extender.gpu.ClusterSnapshot` (built in a background thread and
swapped in whole, like the Trimaran collector; handlers only read it):

- :class:`~services.scheduler_extender.informer.InformerCache` (the default, ``--cache
  watch``): list + watch, so only changes are decoded;
- :class:`ClusterCache` here (``--cache list``): a **periodic list** every
  ``refresh_interval_s`` (default 2 s), served from the apiserver's watch cache
  (``resourceVersion=0``), with no resourceVersion bookkeeping. Simple and self-healing, but
  each list decodes every node and pod while holding the GIL, which shows in the request
  tail on large clusters (BENCHMARKS.md).

Staleness of either is safe: ``nvidia.com/gpu`` is not ``ignoredByScheduler``, so
kube-scheduler's own NodeResourcesFit (which knows the pods it has just assumed) still
refuses a node whose slots are taken. When no list has succeeded yet, or the view is older
than ``max_age_s`` (apiserver down), ``snapshot()`` raises and the handlers fail open.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from ecrl.errors import InvalidRequest, NotReady, Temporary
from services.scheduler_extender.gpu import GPU_COUNT_LABEL, ClusterSnapshot, Node, gpu_speed
from services.scheduler_extender.wire import GPU_RESOURCE, Pod, parse_pod, parse_quantity

log = logging.getLogger("ecrl.extender.cache")


class ClusterView(Protocol):
    """Anything that hands out the current snapshot (the cache, or a fixed one in tests)."""

    def snapshot(self) -> ClusterSnapshot: ...


class ClusterSource(Protocol):
    """Lists the cluster's nodes and pods as v1 JSON objects (raising on any failure)."""

    def list_nodes(self) -> list[dict]: ...

    def list_pods(self) -> list[dict]: ...


class StaticView:
    """A fixed snapshot (tests, and tools that score offline)."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> ClusterSnapshot:
        return self._snapshot


def parse_node(obj: dict) -> Node:
    """A v1.Node JSON object → :class:`Node` (InvalidRequest names the bad field)."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("node.metadata.name: missing")
    alloc = (obj.get("status") or {}).get("allocatable") or {}
    labels = meta.get("labels") or {}
    slots = parse_quantity(alloc.get(GPU_RESOURCE, "0"), f"node {name}: {GPU_RESOURCE}")
    try:
        count = int(labels.get(GPU_COUNT_LABEL, "1" if slots else "0"))
    except (TypeError, ValueError):
        count = 1 if slots else 0
    return Node(
        name=name,
        gpu_slots_total=int(slots),
        gpu_count=max(count, 0),
        gpu_speed=gpu_speed(meta.get("annotations") or {}),
        cpu_allocatable_cores=parse_quantity(alloc.get("cpu", "0"), f"node {name}: cpu"),
        memory_allocatable_bytes=parse_quantity(alloc.get("memory", "0"), f"node {name}: memory"),
    )


def build_snapshot(node_objs: list[dict], pod_objs: list[dict], taken_at_s: float):
    """Parse listed objects into a snapshot; an unreadable object is skipped and logged."""
    nodes: list[Node] = []
    pods: list[Pod] = []
    for obj in node_objs:
        try:
            nodes.append(parse_node(obj))
        except InvalidRequest as exc:
            log.warning("node skipped", extra={"error": str(exc)})
    for obj in pod_objs:
        try:
            pods.append(parse_pod(obj, "pod"))
        except InvalidRequest as exc:
            log.warning("pod skipped", extra={"error": str(exc)})
    return ClusterSnapshot.build(nodes, pods, taken_at_s)


class CacheMetrics:
    """The cache metrics both caches export (the re-lister and the informer)."""

    def __init__(self, registry: CollectorRegistry, age_s: Callable[[], float]) -> None:
        counter = Counter(
            "ecrl_extender_cache_refreshes",
            "Cluster lists by outcome (ok, error).",
            ["outcome"],
            registry=registry,
        )
        self.refreshes = {o: counter.labels(o) for o in ("ok", "error")}
        age = Gauge(
            "ecrl_extender_cache_age_seconds",
            "Age of the node/pod snapshot (+Inf before the first successful list).",
            registry=registry,
        )
        age.set_function(age_s)


class ClusterCache:
    """Keeps a fresh :class:`ClusterSnapshot` from a :class:`ClusterSource`."""

    def __init__(
        self,
        source: ClusterSource,
        refresh_interval_s: float = 2.0,
        max_age_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.source = source
        self.refresh_interval_s = refresh_interval_s
        self.max_age_s = max_age_s
        self.clock = clock
        self._snapshot: ClusterSnapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        registry = registry if registry is not None else CollectorRegistry()
        self.metrics = CacheMetrics(registry, self.age_s)

    def age_s(self) -> float:
        snap = self._snapshot
        return float("inf") if snap is None else max(self.clock() - snap.taken_at_s, 0.0)

    @property
    def ready(self) -> bool:
        return self.age_s() <= self.max_age_s

    def refresh(self) -> ClusterSnapshot:
        """List nodes and pods once and swap the new snapshot in; raises Temporary on failure."""
        taken_at = self.clock()
        try:
            snap = build_snapshot(self.source.list_nodes(), self.source.list_pods(), taken_at)
        except Exception as exc:  # any client/transport error: keep the old snapshot
            self.metrics.refreshes["error"].inc()
            raise Temporary(f"cluster list failed: {type(exc).__name__}: {exc}") from exc
        self._snapshot = snap
        self.metrics.refreshes["ok"].inc()
        return snap

    def snapshot(self) -> ClusterSnapshot:
        """The current snapshot; NotReady before the first list, Temporary when too old."""
        snap = self._snapshot
        if snap is None:
            raise NotReady("cluster cache: no successful list yet")
        age = self.clock() - snap.taken_at_s
        if age > self.max_age_s:
            raise Temporary(f"cluster cache: last successful list {age:.1f} s ago")
        return snap

    # -- background refresh ------------------------------------------------------------
    def start(self) -> None:
        """Refresh every ``refresh_interval_s`` in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="extender-cache", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.refresh()
                if failing:
                    log.info("cluster list recovered")
                failing = False
            except Temporary as exc:
                if not failing:  # log the first failure of a run, not every 2 s
                    log.warning(
                        "cluster list failed; serving fail-open when stale",
                        extra={"error": str(exc)[:300]},
                    )
                failing = True
            self._stop.wait(self.refresh_interval_s)
