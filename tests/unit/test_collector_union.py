"""One PromQL request per tick: the union of every instant query, split back per query.

What :func:`split_union` makes of a union answer must equal what :func:`join` makes of the
separate answers; a refused union falls back to one request per query, an unreachable
Prometheus fails every query of the union.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.collector.collector import Collector
from services.collector.config import CollectorConfig
from services.collector.observation import Sample
from services.collector.queries import Query
from services.collector.sources import (
    PART_LABEL,
    QUERY_LABEL,
    PrometheusSource,
    SourceError,
    UnionRefused,
    join,
    split_union,
    union_promql,
)

QUERIES = Collector(CollectorConfig(), prometheus=None, triton=lambda: None).queries  # type: ignore[arg-type]
INSTANT = [q for q in QUERIES if q.freshness is not None]
RANGE = [q for q in QUERIES if q.freshness is None]


def test_union_tags_every_instant_query_and_its_freshness() -> None:
    text = union_promql(INSTANT)
    # each operand is a function argument: an `or` inside a query stays inside its operand
    assert text.count("label_replace(label_replace(") == 2 * len(INSTANT)
    for q in INSTANT:
        assert f'"{QUERY_LABEL}", "{q.name}"' in text
        assert q.promql in text and q.freshness in text


def test_a_range_selector_cannot_join_the_union() -> None:
    assert RANGE, "the generation history is a range selector"
    with pytest.raises(ValueError, match=RANGE[0].name):
        union_promql(QUERIES)


def _tagged(rows: list[dict], name: str, part: str) -> list[dict]:
    return [{**r, "metric": {**r["metric"], QUERY_LABEL: name, PART_LABEL: part}} for r in rows]


def test_split_union_equals_joining_the_separate_answers() -> None:
    ready, slots = (
        next(q for q in INSTANT if q.name == n) for n in ("pod_ready", "free_gpu_slots")
    )
    ready_v = [
        {"metric": {"pod": "a"}, "value": [100.0, "1"]},
        {"metric": {"pod": "b"}, "value": [100.0, "0.5"]},
    ]
    ready_t = [{"metric": {"pod": "a"}, "value": [100.0, "97.5"]}]  # b: its sample went stale
    slots_v = [{"metric": {"node": "box"}, "value": [100.0, "2"]}]
    slots_t = [{"metric": {"node": "box"}, "value": [100.0, "98"]}]
    rows = [
        *_tagged(ready_t, "pod_ready", "time"),
        *_tagged(slots_v, "free_gpu_slots", "value"),
        *_tagged(ready_v, "pod_ready", "value"),
        *_tagged(slots_t, "free_gpu_slots", "time"),
    ]
    got = split_union([ready, slots], rows)
    assert got == {
        "pod_ready": join(ready, ready_v, ready_t),
        "free_gpu_slots": join(slots, slots_v, slots_t),
    }
    assert got["pod_ready"][0] == Sample({"pod": "a"}, 1.0, 97.5)
    assert got["pod_ready"][1].timestamp_s is None  # missing, never invented


def test_split_union_gives_an_empty_result_to_a_query_without_series() -> None:
    assert split_union(INSTANT[:1], []) == {INSTANT[0].name: []}


def test_split_union_refuses_rows_it_did_not_ask_for() -> None:
    row = {"metric": {QUERY_LABEL: "nope", PART_LABEL: "value"}, "value": [1.0, "1"]}
    with pytest.raises(KeyError):
        split_union(INSTANT[:1], [row])
    row = {"metric": {QUERY_LABEL: INSTANT[0].name, PART_LABEL: "other"}, "value": [1.0, "1"]}
    with pytest.raises(ValueError):
        split_union(INSTANT[:1], [row])


class FakeSource(PrometheusSource):
    """The fetch logic with canned answers instead of HTTP."""

    def __init__(self, union_error: SourceError | None, failing: Sequence[str] = ()) -> None:
        super().__init__("http://127.0.0.1:9", timeout_s=1.0, workers=2)
        self.union_error, self.failing = union_error, set(failing)
        self.union_calls: list[list[str]] = []
        self.single_calls: list[str] = []

    def _union(self, queries: Sequence[Query], eval_time_s: float) -> dict[str, list[Sample]]:
        self.union_calls.append([q.name for q in queries])
        if self.union_error is not None:
            raise self.union_error
        return {q.name: [Sample({}, 1.0, eval_time_s)] for q in queries}

    def _one(self, query: Query, eval_time_s: float) -> list[Sample]:
        self.single_calls.append(query.name)
        if query.name in self.failing:
            raise SourceError("many-to-many matching not allowed")
        return [Sample({}, 2.0, eval_time_s)]


def test_fetch_sends_one_union_and_each_range_selector_alone() -> None:
    src = FakeSource(None)
    try:
        fetched = src.fetch(QUERIES, 10.0)
    finally:
        src.close()
    assert src.union_calls == [[q.name for q in INSTANT]]
    assert src.single_calls == [q.name for q in RANGE]
    assert list(fetched.results) == [q.name for q in QUERIES] and fetched.errors == {}


def test_a_refused_union_falls_back_to_one_request_per_query() -> None:
    src = FakeSource(UnionRefused("HTTP 422"), failing=["pods"])
    try:
        fetched = src.fetch(QUERIES, 10.0)
    finally:
        src.close()
    assert sorted(src.single_calls) == sorted(q.name for q in QUERIES)
    assert set(fetched.errors) == {"pods"}  # only the failing query is missing
    assert set(fetched.results) == {q.name for q in QUERIES} - {"pods"}


def test_an_unreachable_prometheus_fails_every_query_of_the_union() -> None:
    src = FakeSource(SourceError("Prometheus unreachable: ConnectionError"))
    try:
        fetched = src.fetch(QUERIES, 10.0)
    finally:
        src.close()
    assert src.single_calls == [q.name for q in RANGE]  # no retry storm
    assert set(fetched.errors) == {q.name for q in INSTANT}
    assert all("unreachable" in e for e in fetched.errors.values())
