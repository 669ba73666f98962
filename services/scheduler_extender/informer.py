"""The extender's cluster view kept by list + watch (a client-go style informer).

Why not re-list: a full list of 100 nodes is ~0.5 MB of JSON, and decoding it is one C call
that holds the GIL for several milliseconds. Every 2 s that stalled whichever ``/prioritize``
arrived meanwhile, which was most of the extender's p99 (BENCHMARKS.md). A watch delivers only
changes; a kwok or kubelet heartbeat that changes nothing the extender reads (allocatable,
labels, GPU annotations; a pod's node, phase, requests) is parsed, compared and dropped
without building a new snapshot.

The reflector loop per kind is upstream's: list (``resourceVersion=0``, served from the
apiserver's watch cache), then watch from the list's resourceVersion with bookmarks; on
"410 Gone" or any error, list again after a capped backoff. The watch is asked to end after
``watch_timeout_s`` so a quiet but healthy stream still reports in; a stream that neither
delivers nor ends within its read timeout counts as broken.

Freshness: the view is as fresh as the *older* of the two streams' last sign of life (a list,
an event, a bookmark, or a clean end). Past ``max_age_s`` :meth:`InformerCache.snapshot`
raises and the handlers fail open, exactly like the re-listing
:class:`~services.scheduler_extender.cache.ClusterCache`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from ecrl.errors import InvalidRequest, NotReady, Temporary
from services.scheduler_extender.cache import CacheMetrics, parse_node
from services.scheduler_extender.gpu import ClusterSnapshot, Node
from services.scheduler_extender.wire import Pod, parse_pod

log = logging.getLogger("ecrl.extender.informer")

KINDS = ("nodes", "pods")
BACKOFF_S = (0.2, 5.0)
"""First and largest wait before re-listing after a failure (doubling in between)."""


class WatchSource(Protocol):
    """Lists and watches v1 objects as JSON (raising on any transport failure)."""

    def list(self, kind: str) -> tuple[list[dict], str]:
        """``(items, resourceVersion)`` of a list of ``kind`` (nodes or pods)."""
        ...

    def watch(self, kind: str, resource_version: str, timeout_s: float) -> Iterator[dict]:
        """Watch events (``{"type", "object"}``) after ``resource_version``, ending when the
        server ends the watch (about ``timeout_s``)."""
        ...


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


def _parse(kind: str, obj: dict) -> Node | Pod:
    return parse_node(obj) if kind == "nodes" else parse_pod(obj, "pod")


def _key(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


class InformerCache:
    """A fresh :class:`ClusterSnapshot` kept by one list+watch thread per kind."""

    def __init__(
        self,
        source: WatchSource,
        max_age_s: float = 10.0,
        watch_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.source = source
        self.max_age_s = max_age_s
        self.watch_timeout_s = (
            watch_timeout_s if watch_timeout_s is not None else max(1.0, max_age_s / 2)
        )
        """Shorter than ``max_age_s``: a quiet healthy stream ends and restarts before its
        silence could be mistaken for a dead apiserver."""
        self.clock = clock
        self._objects: dict[str, dict[str, Node | Pod]] = {k: {} for k in KINDS}
        self._alive_at: dict[str, float | None] = dict.fromkeys(KINDS)
        self._listed_rv: dict[str, str | None] = dict.fromkeys(KINDS)
        """resourceVersions of :meth:`sync`'s lists, where the threads start watching."""
        self._snapshot: ClusterSnapshot | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        registry = registry if registry is not None else CollectorRegistry()
        self.metrics = CacheMetrics(registry, self.age_s)
        self.events = Counter(
            "ecrl_extender_cache_events",
            "Watch events by kind and whether they changed what the extender reads.",
            ["kind", "outcome"],
            registry=registry,
        )
        self._event_children = {
            (k, o): self.events.labels(k, o)
            for k in KINDS
            for o in ("changed", "unchanged", "bookmark", "skipped")
        }

    # -- freshness ---------------------------------------------------------------------
    def age_s(self) -> float:
        marks = list(self._alive_at.values())
        if self._snapshot is None or any(m is None for m in marks):
            return float("inf")
        return max(self.clock() - min(marks), 0.0)  # type: ignore[type-var]

    @property
    def ready(self) -> bool:
        return self.age_s() <= self.max_age_s

    def snapshot(self) -> ClusterSnapshot:
        """The current snapshot; NotReady before both lists, Temporary when a stream is stale."""
        snap = self._snapshot
        if snap is None or any(m is None for m in self._alive_at.values()):
            raise NotReady("cluster cache: no successful list yet")
        age = self.age_s()
        if age > self.max_age_s:
            raise Temporary(f"cluster cache: no word from the apiserver for {age:.1f} s")
        return snap

    # -- the store ---------------------------------------------------------------------
    def _alive(self, kind: str) -> None:
        self._alive_at[kind] = self.clock()

    def _rebuild(self) -> None:
        """Swap in a snapshot of the store (callers hold the lock)."""
        if any(m is None for m in self._alive_at.values()):
            return  # the other kind has not been listed yet
        nodes = self._objects["nodes"].values()
        pods = self._objects["pods"].values()
        self._snapshot = ClusterSnapshot.build(nodes, pods, self.clock())  # type: ignore[arg-type]

    def replace(self, kind: str, items: list[dict]) -> None:
        """A fresh list of ``kind``: replace the store's objects of that kind."""
        parsed: dict[str, Node | Pod] = {}
        for obj in items:
            try:
                parsed[_key(obj)] = _parse(kind, obj)
            except InvalidRequest as exc:
                log.warning("object skipped", extra={"kind": kind, "error": str(exc)})
        with self._lock:
            self._objects[kind] = parsed
            self._alive(kind)
            self._rebuild()

    def apply(self, kind: str, event: dict) -> None:
        """One watch event; raises :class:`Gone` on 410 and RuntimeError on other ERRORs."""
        typ = event.get("type")
        obj = event.get("object") or {}
        if typ == "ERROR":
            if obj.get("code") == 410:
                raise Gone(obj.get("message", "resource version too old"))
            raise RuntimeError(f"watch {kind}: {obj.get('message', obj)}")
        if typ == "BOOKMARK":
            self._alive(kind)
            self._event_children[kind, "bookmark"].inc()
            return
        key = _key(obj)
        store = self._objects[kind]
        new: Node | Pod | None = None
        if typ != "DELETED":
            try:
                new = _parse(kind, obj)
            except InvalidRequest as exc:  # unreadable now: drop it, as a re-list would
                log.warning("object skipped", extra={"kind": kind, "error": str(exc)})
                self._event_children[kind, "skipped"].inc()
        with self._lock:
            self._alive(kind)
            if store.get(key) == new:  # a heartbeat, or a delete of something never stored
                self._event_children[kind, "unchanged"].inc()
                return
            if new is None:
                store.pop(key, None)
            else:
                store[key] = new
            self._rebuild()
        self._event_children[kind, "changed"].inc()

    # -- the reflector threads ----------------------------------------------------------
    def sync(self) -> ClusterSnapshot:
        """List both kinds once (the warm start); raises Temporary on failure."""
        for kind in KINDS:
            self._listed_rv[kind] = self._list(kind)
        return self.snapshot()

    def _list(self, kind: str) -> str:
        try:
            items, rv = self.source.list(kind)
        except Exception as exc:  # any client/transport error: keep the old store
            self.metrics.refreshes["error"].inc()
            raise Temporary(f"{kind} list failed: {type(exc).__name__}: {exc}") from exc
        self.replace(kind, items)
        self.metrics.refreshes["ok"].inc()
        return rv

    def _reflect(self, kind: str) -> None:
        rv = self._listed_rv[kind]
        backoff = BACKOFF_S[0]
        failing = False
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list(kind)
                for event in self.source.watch(kind, rv, self.watch_timeout_s):
                    if self._stop.is_set():
                        return
                    self.apply(kind, event)
                    rv = (event.get("object") or {}).get("metadata", {}).get("resourceVersion", rv)
                self._alive(kind)  # the server ended the watch on time: still in sync
                if failing:
                    log.info("watch recovered", extra={"kind": kind})
                failing, backoff = False, BACKOFF_S[0]
            except Gone:
                rv = None  # normal after a long disconnect: list again at once
            except Exception as exc:
                if not failing:  # log the first failure of a run, not every retry
                    log.warning(
                        "watch failed; serving fail-open when stale",
                        extra={"kind": kind, "error": f"{type(exc).__name__}: {exc}"[:300]},
                    )
                failing, rv = True, None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_S[1])

    def start(self) -> None:
        """One daemon thread per kind until :meth:`stop` (lists first if :meth:`sync` failed)."""
        if self._threads:
            return
        for kind in KINDS:
            t = threading.Thread(target=self._reflect, args=(kind,), name=f"informer-{kind}")
            t.daemon = True
            t.start()
            self._threads.append(t)

    def stop(self, timeout_s: float = 1.0) -> None:
        """Ask the threads to stop; a thread inside a watch read ends with the watch."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        self._threads = []
