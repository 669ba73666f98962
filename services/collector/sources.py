"""Thin I/O shells: Prometheus (through prometheus-api-client) and Triton's model config.

Both have bounded timeouts and no retries inside a tick (the next tick is the retry); a failure
becomes a missing input, counted by the caller, never an exception in the tick loop.

One tick is **two** Prometheus requests on one keep-alive session, not one per query: every
instant query and its freshness query are tagged with :data:`QUERY_LABEL` / :data:`PART_LABEL`
(``label_replace``) and joined by ``or`` into one expression (:func:`union_promql`), which
Prometheus evaluates at the one evaluation time; :func:`split_union` takes the answer apart
by the tags into exactly the per-query results of separate requests. The tags make every
operand's label sets distinct, so ``or`` keeps every series. The range selector
(``generation_history``) is the second request, sent at the same time. When Prometheus refuses
the union (a query failing at run time, e.g. a many-to-many match, fails the whole
expression), the tick falls back to one request per query so that only the failing input is
missing, as before; when Prometheus is unreachable, slow or answers garbage, every query of
the union gets that error.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException
from urllib3.util.retry import Retry

from ecrl.errors import Temporary
from ecrl.serving import load_config

from .observation import Batching, Sample
from .queries import Query

log = logging.getLogger("ecrl.collector.sources")


class SourceError(Temporary):
    """A source did not answer usefully this tick (unreachable, error status, bad body)."""


@dataclass(frozen=True)
class Fetched:
    """One tick's query results (name → series) and the error of each query that failed."""

    results: dict[str, list[Sample]]
    errors: dict[str, str]


def _key(labels: Mapping[str, str], by: Sequence[str]) -> tuple[str, ...]:
    return tuple(labels.get(b, "") for b in by)


def _number(raw: Any) -> float:
    """Prometheus' sample value string ("1.5", "NaN", "+Inf") as a float."""
    return float(raw)


QUERY_LABEL = "ecrl_query"
"""Label naming the query a series of the union answers."""
PART_LABEL = "ecrl_part"
"""Label saying whether a series of the union is a value or a sample time."""
VALUE_PART, TIME_PART = "value", "time"
UNION_FALLBACK_STATUSES = frozenset({400, 422})
"""Prometheus' ``bad_data`` and ``execution`` errors: the expression itself was refused."""


def _tag(promql: str, name: str, part: str) -> str:
    # label_replace with an empty source label and regex adds a constant label to every series
    inner = f'label_replace({promql}, "{QUERY_LABEL}", "{name}", "", "")'
    return f'label_replace({inner}, "{PART_LABEL}", "{part}", "", "")'


def union_promql(queries: Sequence[Query]) -> str:
    """One PromQL expression answering every instant query and its freshness query at once."""
    parts = []
    for q in queries:
        if q.freshness is None:
            raise ValueError(f"{q.name}: a range selector cannot join an instant-vector union")
        parts += [_tag(q.promql, q.name, VALUE_PART), _tag(q.freshness, q.name, TIME_PART)]
    return " or ".join(parts)


def split_union(queries: Sequence[Query], rows: list[dict]) -> dict[str, list[Sample]]:
    """The answer of :func:`union_promql` → per query, what :func:`join` makes of the answers
    of its two separate requests (the tag labels removed)."""
    values: dict[str, list[dict]] = {q.name: [] for q in queries}
    times: dict[str, list[dict]] = {q.name: [] for q in queries}
    for row in rows:
        metric = dict(row["metric"])
        name = metric.pop(QUERY_LABEL)
        part = metric.pop(PART_LABEL)
        if part == VALUE_PART:
            values[name].append({**row, "metric": metric})
        elif part == TIME_PART:
            times[name].append({**row, "metric": metric})
        else:
            raise ValueError(f"unknown {PART_LABEL} {part!r}")
    return {q.name: join(q, values[q.name], times[q.name]) for q in queries}


class UnionRefused(SourceError):
    """Prometheus refused the union expression itself (400/422): ask query by query."""


def join(query: Query, values: list[dict], times: list[dict] | None) -> list[Sample]:
    """Value series joined with their sample times by the query's ``by`` labels.

    A range selector (``times`` None) returns raw points: one :class:`Sample` per point, each
    with its own timestamp.
    """
    if times is None:
        return [
            Sample(row["metric"], _number(v), float(ts))
            for row in values
            for ts, v in row.get("values", ())
        ]
    stamps = {_key(row["metric"], query.by): _number(row["value"][1]) for row in times}
    out = []
    for row in values:
        ts = stamps.get(_key(row["metric"], query.by))
        out.append(
            Sample(
                row["metric"],
                _number(row["value"][1]),
                ts if ts is not None and math.isfinite(ts) else None,
            )
        )
    return out


class PrometheusSource:
    """Runs the queries of one tick at one evaluation time: one union request for the instant
    queries and one per range selector, at once, over one keep-alive session."""

    def __init__(self, url: str, timeout_s: float, workers: int = 4) -> None:
        from prometheus_api_client import PrometheusConnect

        self.url = url.rstrip("/")
        self.session = requests.Session()
        # no retries: a slow or dead Prometheus must not stretch the tick past its period
        self.client = PrometheusConnect(
            self.url, retry=Retry(total=0), timeout=timeout_s, session=self.session
        )
        self.timeout_s = timeout_s
        self._pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="promql")

    def _params(self, eval_time_s: float) -> dict[str, str]:
        return {"time": f"{eval_time_s:.3f}", "timeout": f"{self.timeout_s:g}s"}

    def _query(self, promql: str, eval_time_s: float) -> list[dict]:
        try:
            return self.client.custom_query(promql, params=self._params(eval_time_s))
        except PrometheusApiClientException as exc:
            raise SourceError(f"Prometheus refused the query: {str(exc)[:300]}") from exc
        except requests.RequestException as exc:
            raise SourceError(f"Prometheus unreachable: {type(exc).__name__}") from exc
        except (ValueError, KeyError) as exc:
            raise SourceError(f"Prometheus answer unreadable: {exc}") from exc

    def _one(self, query: Query, eval_time_s: float) -> list[Sample]:
        values = self._query(query.promql, eval_time_s)
        times = None if query.freshness is None else self._query(query.freshness, eval_time_s)
        try:
            return join(query, values, times)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise SourceError(f"unexpected result shape: {exc}") from exc

    def _union(self, queries: Sequence[Query], eval_time_s: float) -> dict[str, list[Sample]]:
        """Every instant query in one POST (form body: the expression is ~10 kB)."""
        data = {"query": union_promql(queries), **self._params(eval_time_s)}
        try:
            resp = self.session.post(f"{self.url}/api/v1/query", data=data, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise SourceError(f"Prometheus unreachable: {type(exc).__name__}") from exc
        if resp.status_code != 200:
            error = SourceError if resp.status_code not in UNION_FALLBACK_STATUSES else UnionRefused
            raise error(
                f"Prometheus refused the query: HTTP Status Code {resp.status_code} "
                f"({resp.content[:300]!r})"
            )
        try:
            return split_union(queries, resp.json()["data"]["result"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise SourceError(f"unexpected result shape: {exc}") from exc

    def fetch(self, queries: Sequence[Query], eval_time_s: float) -> Fetched:
        """Every query evaluated at ``eval_time_s`` (one consistent snapshot)."""
        instant = [q for q in queries if q.freshness is not None]
        union = self._pool.submit(self._union, instant, eval_time_s) if instant else None
        jobs = {
            q.name: self._pool.submit(self._one, q, eval_time_s)
            for q in queries
            if q.freshness is None
        }
        found: dict[str, list[Sample]] = {}
        errors: dict[str, str] = {}
        if union is not None:
            try:
                found.update(union.result())
            except UnionRefused:  # a query fails at run time: one request each isolates it
                jobs.update({q.name: self._pool.submit(self._one, q, eval_time_s) for q in instant})
            except SourceError as exc:
                errors.update({q.name: str(exc) for q in instant})
        for name, job in jobs.items():
            try:
                found[name] = job.result()
            except SourceError as exc:
                errors[name] = str(exc)
        results = {q.name: found[q.name] for q in queries if q.name in found}
        return Fetched(results, {q.name: errors[q.name] for q in queries if q.name in errors})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
        self.session.close()


# ------------------------------------------------------------------------------ Triton
def _int(value: Any, name: str) -> int:
    """An integer field; protobuf's JSON mapping writes 64-bit integers as strings."""
    if isinstance(value, bool):
        raise SourceError(f"model config: {name} is not an integer: {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SourceError(f"model config: {name} is not an integer: {value!r}") from None


def parse_model_config(config: Any, *, placed: bool = True) -> Batching:
    """Triton's model configuration (JSON) → the batching settings the state encodes.

    ``max_batch_size`` and ``instance_group`` must be present (Triton fills both in the config
    it serves). Without ``dynamic_batching`` Triton runs no dynamic batcher, so no request is
    held back: the delay is 0 by the config's own meaning. Instances: ``count`` per group,
    times the listed GPUs of a KIND_GPU group (Triton places ``count`` on each).

    ``placed=False`` counts the groups' ``count`` alone — what a load-with-config asks for: a
    target (:func:`model_config`) lists no GPUs, Triton fills them in when it places the
    instances, so only the counts compare a pod's served config with the target on a pod that
    sees more than one GPU.
    """
    if not isinstance(config, dict):
        raise SourceError("model config: not a JSON object")
    if "max_batch_size" not in config:
        raise SourceError("model config: no max_batch_size")
    max_batch = _int(config["max_batch_size"], "max_batch_size")
    batching = config.get("dynamic_batching")
    if batching is None:
        delay_us = 0
    elif isinstance(batching, dict):
        delay_us = _int(batching.get("max_queue_delay_microseconds", 0), "max_queue_delay")
    else:
        raise SourceError("model config: dynamic_batching is not an object")
    groups = config.get("instance_group")
    if not isinstance(groups, list) or not groups:
        raise SourceError("model config: no instance_group")
    instances = 0
    for i, g in enumerate(groups):
        if not isinstance(g, dict):
            raise SourceError(f"model config: instance_group[{i}] is not an object")
        count = _int(g.get("count", 1), f"instance_group[{i}].count")
        gpus = g.get("gpus") or []
        per_group = len(gpus) if placed and g.get("kind") == "KIND_GPU" and gpus else 1
        instances += count * per_group
    if max_batch < 0 or delay_us < 0 or instances < 1:
        raise SourceError(
            f"model config: implausible values (max_batch_size={max_batch}, "
            f"max_queue_delay_microseconds={delay_us}, instances={instances})"
        )
    return Batching(max_batch, delay_us / 1e6, instances)


def model_config(batching: Batching) -> dict[str, Any]:
    """The load-with-config body for ``batching`` (:func:`ecrl.serving.load_config`): the
    inverse of :func:`parse_model_config`, so that what the actuator and the testbed load is
    what the collector reads back."""
    return load_config(
        batching.max_batch_size, round(batching.batch_delay_s * 1e6), batching.instance_count
    )


class TritonSource:
    """Reads ``GET <triton>/v2/models/<model>/config`` (KServe v2 model configuration)."""

    def __init__(self, url: str, model: str, timeout_s: float) -> None:
        self.url = f"{url.rstrip('/')}/v2/models/{model}/config"
        self.timeout_s = timeout_s

    def read(self) -> Batching:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            raise SourceError(f"Triton model config: HTTP {exc.code} from {self.url}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise SourceError(f"Triton unreachable at {self.url}: {exc}") from exc
        try:
            config = json.loads(body)
        except ValueError as exc:
            raise SourceError(f"Triton model config: not JSON ({exc})") from exc
        return parse_model_config(config)
