"""The list+watch cache: events change the view, heartbeats do not, 410 and errors re-list,
and a silent apiserver makes it stale (fail open) exactly like the re-listing cache."""

from __future__ import annotations

import copy
import queue
import time
from collections.abc import Iterator

import pytest

from ecrl.errors import NotReady, Temporary
from services.scheduler_extender.informer import Gone, InformerCache
from tests.unit.test_extender_wire import k8s_node, k8s_pod


def with_rv(obj: dict, rv: int) -> dict:
    obj = copy.deepcopy(obj)
    obj["metadata"]["resourceVersion"] = str(rv)
    return obj


def ev(typ: str, obj: dict) -> dict:
    return {"type": typ, "object": obj}


class ScriptedSource:
    """Lists from fixed items; each watch call takes the next script from a queue: a list of
    events (then the server ends the watch), or an exception to raise."""

    def __init__(self) -> None:
        self.items = {"nodes": [k8s_node("box")], "pods": [k8s_pod("a", node="box")]}
        self.lists = {"nodes": 0, "pods": 0}
        self.watched_from: dict[str, list[str]] = {"nodes": [], "pods": []}
        self.scripts: dict[str, queue.Queue] = {"nodes": queue.Queue(), "pods": queue.Queue()}
        self.fail_list = False

    def list(self, kind: str) -> tuple[list[dict], str]:
        if self.fail_list:
            raise ConnectionRefusedError("apiserver down")
        self.lists[kind] += 1
        return copy.deepcopy(self.items[kind]), "100"

    def watch(self, kind: str, resource_version: str, timeout_s: float) -> Iterator[dict]:
        self.watched_from[kind].append(resource_version)
        try:
            script = self.scripts[kind].get(timeout=timeout_s)
        except queue.Empty:
            return  # the server ended a quiet watch
        if isinstance(script, Exception):
            raise script
        yield from script


def wait(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_events_change_the_snapshot_and_heartbeats_do_not() -> None:
    cache = InformerCache(ScriptedSource())
    with pytest.raises(NotReady):
        cache.snapshot()
    snap = cache.sync()
    assert list(snap.nodes) == ["box"] and snap.usage["box"].gpu_slots == 1
    beat = with_rv(k8s_node("box"), 101)
    beat["status"]["conditions"] = [{"type": "Ready", "lastHeartbeatTime": "now"}]
    cache.apply("nodes", ev("MODIFIED", beat))
    assert cache.snapshot() is snap  # nothing the extender reads changed: no rebuild
    cache.apply("nodes", ev("ADDED", with_rv(k8s_node("box2", gpus=2), 102)))
    cache.apply("pods", ev("ADDED", with_rv(k8s_pod("b", gpus=2, node="box"), 103)))
    snap2 = cache.snapshot()
    assert set(snap2.nodes) == {"box", "box2"} and snap2.usage["box"].gpu_slots == 3
    cache.apply("pods", ev("DELETED", with_rv(k8s_pod("a", node="box"), 104)))
    cache.apply("nodes", ev("MODIFIED", with_rv(k8s_node("box2", gpus=8), 105)))
    snap3 = cache.snapshot()
    assert snap3.usage["box"].gpu_slots == 2 and snap3.nodes["box2"].gpu_slots_total == 8
    assert cache.events.labels("nodes", "unchanged")._value.get() == 1
    assert cache.events.labels("pods", "changed")._value.get() == 2


def test_an_unreadable_update_drops_the_object_as_a_relist_would() -> None:
    cache = InformerCache(ScriptedSource())
    cache.sync()
    bad = with_rv(k8s_pod("a", node="box"), 101)
    bad["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "lots"
    cache.apply("pods", ev("MODIFIED", bad))
    assert "box" not in cache.snapshot().usage
    assert cache.events.labels("pods", "skipped")._value.get() == 1


def test_watch_errors_gone_and_other() -> None:
    cache = InformerCache(ScriptedSource())
    cache.sync()
    with pytest.raises(Gone):
        cache.apply("pods", ev("ERROR", {"kind": "Status", "code": 410, "message": "too old"}))
    with pytest.raises(RuntimeError, match="internal"):
        cache.apply("pods", ev("ERROR", {"kind": "Status", "code": 500, "message": "internal"}))


def test_stale_when_the_apiserver_goes_silent_and_not_before() -> None:
    now = [100.0]
    cache = InformerCache(ScriptedSource(), max_age_s=10.0, clock=lambda: now[0])
    cache.sync()
    now[0] += 9.0
    cache.apply("nodes", ev("BOOKMARK", {"metadata": {"resourceVersion": "120"}}))
    now[0] += 2.0  # nodes spoke 2 s ago, pods 11 s ago: the older stream decides
    assert not cache.ready
    with pytest.raises(Temporary, match="no word from the apiserver for 11.0 s"):
        cache.snapshot()
    cache.apply("pods", ev("BOOKMARK", {"metadata": {"resourceVersion": "121"}}))
    assert cache.ready and cache.age_s() == pytest.approx(2.0)


def test_threads_watch_from_the_listed_version_relist_after_410_and_errors() -> None:
    source = ScriptedSource()
    cache = InformerCache(source, watch_timeout_s=0.2)
    cache.sync()
    cache.start()
    try:
        source.scripts["pods"].put([ev("ADDED", with_rv(k8s_pod("b", node="box"), 150))])
        wait(lambda: cache.snapshot().usage["box"].gpu_slots == 2)
        wait(lambda: "150" in source.watched_from["pods"])  # resumed after the event
        assert source.watched_from["pods"][0] == "100" and source.lists["pods"] == 1
        source.scripts["pods"].put([ev("ERROR", {"kind": "Status", "code": 410})])
        wait(lambda: source.lists["pods"] == 2)  # Gone: listed again at once
        assert cache.snapshot().usage["box"].gpu_slots == 1  # the list has no pod b
        source.scripts["nodes"].put(ConnectionResetError("reset"))
        wait(lambda: source.lists["nodes"] == 2)  # broken stream: list again after backoff
        assert cache.ready
    finally:
        cache.stop()


def test_threads_go_stale_while_lists_fail_then_recover() -> None:
    source = ScriptedSource()
    cache = InformerCache(source, max_age_s=2.0, watch_timeout_s=0.1)
    cache.sync()
    source.fail_list = True
    source.scripts["nodes"].put(ConnectionResetError("apiserver gone"))
    cache.start()
    try:
        wait(lambda: not cache.ready)
        with pytest.raises(Temporary):
            cache.snapshot()
        source.fail_list = False
        wait(lambda: cache.ready, timeout_s=10.0)
        assert cache.metrics.refreshes["error"]._value.get() >= 1
    finally:
        cache.stop()
