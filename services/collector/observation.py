"""Query results → :class:`~ecrl.policies.base.Observation`: pure, no I/O (house rule 2).

Input: for each query of :mod:`.queries`, the result series as :class:`Sample` (value and the
time of the oldest raw sample behind it); a query that failed is absent. Rules:

- a sample older than ``stale_after_s`` (or without a sample time) is **missing**, never a
  value: an optional input becomes ``None`` (the schema sets its missing flag), a required
  input makes the whole tick **stale** — :class:`StaleInputs` is raised and no state is built;
- the required inputs are those the schema encodes without a missing flag (``ecrl.schema``:
  replicas desired/ready/pending, free GPU slots, CPU/memory request, batching settings) plus
  what a pod needs to exist in the observation (readiness, creation time); min/max replicas
  and the SLO come from the configuration, the batching settings from Triton's model config;
- per-pod inputs are matched to the Deployment's pods (the ``pods`` query); a pod without a
  fresh value has ``None`` for it; Observation-level sums and means use the pods that report.

Names listed in :attr:`Built.missing_inputs` are Observation fields (``gpu_util_ratio``) and
per-pod fields as ``field@pod`` (``cpu_usage_cores@mobilenetv4-triton-7c9-abcde``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ecrl.errors import Temporary
from ecrl.policies.base import Observation, PodMetrics
from ecrl.schema import AGE_CAP_S

MIB = 2**20


@dataclass(frozen=True, slots=True)
class Sample:
    """One result series: its identifying labels, value, and the time of its raw sample(s)."""

    labels: Mapping[str, str]
    value: float
    timestamp_s: float | None
    """Unix seconds of the oldest raw sample behind the value; None = no fresh sample found."""


@dataclass(frozen=True, slots=True)
class Batching:
    """The Triton model-config settings the state encodes (read from ``/v2/models/<m>/config``)."""

    max_batch_size: int
    batch_delay_s: float
    instance_count: int


@dataclass(frozen=True, slots=True)
class Settings:
    """What the configuration, not the cluster, says (the actuator's envelope and the SLO)."""

    min_replicas: int
    max_replicas: int
    slo_p95_s: float
    gpu_node_label: str = "Hostname"
    """The dcgm-exporter label that holds the node name."""


@dataclass(frozen=True, slots=True)
class BuildInput:
    """Everything one tick's observation is built from."""

    results: Mapping[str, Sequence[Sample]]
    """Query name → result series; a failed query is absent."""
    batching: Batching | None
    """None: Triton's model config could not be read."""
    settings: Settings
    now_s: float
    stale_after_s: float
    config_change: tuple[float, float] = (0.0, math.inf)
    """(lower, upper) bound of the seconds since Triton's model config last changed, as far as
    the collector has seen it (see :class:`ChangeTracker`)."""


@dataclass(frozen=True, slots=True)
class Built:
    """One tick's observation and what was missing in it."""

    observation: Observation
    missing_inputs: tuple[str, ...]
    observed_at_s: float
    """The newest sample time used."""
    diagnostics: dict[str, float | None] = field(default_factory=dict)
    """Derived values that are not part of the state (mean latency, compute time)."""


def to_box_time(built: Built, time_scale: float) -> Built:
    """A slowed-down data plane's measurements in the units of the box it stands for.

    The testbed's emulator runs every service time ×``time_scale`` (so two CPU cores can
    saturate it); a policy trained on the box must see the box's units: request rates
    ×``time_scale``, latencies and queue times ÷``time_scale``. Utilizations, CPU cores
    (CPU-seconds per second: ×scale slower work at ÷scale the rate), in-flight requests
    (Little's law), settings and ages are unchanged. ``time_scale == 1`` (the real box) is the
    identity. Missing values stay missing.
    """
    if time_scale == 1.0:
        return built

    def rate(v: float | None) -> float | None:
        return None if v is None else v * time_scale

    def lat(v: float | None) -> float | None:
        return None if v is None else v / time_scale

    o = built.observation
    pods = tuple(
        replace(
            p, request_rate_rps=rate(p.request_rate_rps), queue_time_avg_s=lat(p.queue_time_avg_s)
        )
        for p in o.pods
    )
    obs = replace(
        o, pods=pods, request_rate_rps=rate(o.request_rate_rps), p95_latency_s=lat(o.p95_latency_s)
    )
    diagnostics = {k: lat(v) for k, v in built.diagnostics.items()}  # all of them are times
    return replace(built, observation=obs, diagnostics=diagnostics)


class StaleInputs(Temporary):
    """A required input is missing or stale: this tick produces no state (never a default)."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__("required input(s) missing or stale: " + ", ".join(self.missing))


class _Reader:
    """Fresh samples of one tick, keyed by their labels; notes what was stale or missing."""

    def __init__(self, inp: BuildInput) -> None:
        self.inp = inp
        self.required_missing: list[str] = []
        self.newest_s = -math.inf

    def _fresh(self, s: Sample) -> bool:
        ts = s.timestamp_s
        return ts is not None and self.inp.now_s - ts <= self.inp.stale_after_s

    def series(self, name: str, required: bool = False) -> list[Sample] | None:
        """Fresh, finite samples of ``name``; None if the query failed.

        For a required input any stale series makes the input missing (a stale entry means the
        exporter's whole scrape is old, so dropping it would invent a smaller cluster).
        """
        rows = self.inp.results.get(name)
        if rows is None:
            if required:
                self.required_missing.append(name)
            return None
        if required and not all(self._fresh(s) for s in rows):
            self.required_missing.append(name)
            return None
        fresh = [s for s in rows if self._fresh(s) and math.isfinite(s.value)]
        for s in fresh:
            self.newest_s = max(self.newest_s, s.timestamp_s or -math.inf)
        return fresh

    def one(self, name: str, required: bool = False) -> float | None:
        """The single value of a label-less query (None when missing)."""
        rows = self.series(name, required)
        if not rows:
            if rows is not None and required:
                self.required_missing.append(name)
            return None
        return rows[0].value

    def per(self, name: str, label: str, required: bool = False) -> dict[str, float] | None:
        rows = self.series(name, required)
        if rows is None:
            return None
        return {s.labels.get(label, ""): s.value for s in rows}


def build(inp: BuildInput) -> Built:
    """The observation of one tick, or :class:`StaleInputs` naming the missing required inputs."""
    r = _Reader(inp)
    pods_rows = r.series("pods", required=True)
    desired = r.one("desired_replicas", required=True)
    ready = r.per("pod_ready", "pod", required=True)
    created = r.per("pod_created", "pod", required=True)
    cpu_req = r.per("pod_cpu_request", "pod", required=True)
    mem_req = r.per("pod_memory_request", "pod", required=True)
    slots = r.per("free_gpu_slots", "node", required=True)
    if slots is not None and not slots:
        r.required_missing.append("free_gpu_slots")  # no GPU node at all: nothing to manage
    if inp.batching is None:
        r.required_missing.append("triton_model_config")
    if r.required_missing:
        raise StaleInputs(sorted(set(r.required_missing)))
    assert pods_rows is not None and desired is not None and ready is not None
    assert created is not None and cpu_req is not None and mem_req is not None
    assert slots is not None and inp.batching is not None

    node_of = {s.labels["pod"]: s.labels.get("node") or None for s in pods_rows}
    names = sorted(node_of)
    lacking = [
        f"{query}@{p}"
        for query, values in (("pod_ready", ready), ("pod_created", created))
        for p in names
        if p not in values
    ]
    newest = max(names, key=lambda p: created.get(p, -math.inf), default=None)
    requests = _requests(newest, cpu_req, mem_req)
    if lacking or requests is None:
        raise StaleInputs(sorted(lacking) or ["pod_cpu_request", "pod_memory_request"])
    cpu_request, memory_request = requests

    missing: list[str] = []
    pods, success, failure = _pods(r, names, ready, created, missing)
    total = sum(success.values()) + sum(failure.values()) if success else None
    rates = {p: success[p] + failure[p] for p in success}
    hosting = sorted({n for n in node_of.values() if n is not None})
    gpus = _gpus(r, inp.settings.gpu_node_label, hosting)
    limits = {k: r.per(f"pod_{k}_limit", "pod") for k in ("cpu", "memory")}
    obs = Observation(
        time_s=inp.now_s,
        pods=tuple(pods),
        desired_replicas=int(desired),
        min_replicas=inp.settings.min_replicas,
        max_replicas=inp.settings.max_replicas,
        cpu_request_cores=cpu_request,
        cpu_limit_cores=_limit(limits["cpu"], newest),
        memory_request_bytes=int(memory_request),
        memory_limit_bytes=_limit_bytes(limits["memory"], newest),
        max_batch_size=inp.batching.max_batch_size,
        batch_delay_s=inp.batching.batch_delay_s,
        instance_count=inp.batching.instance_count,
        request_rate_rps=total,
        p95_latency_s=_weighted(r.per("p95_latency", "pod"), rates),
        success_ratio=None if total is None or total <= 0 else sum(success.values()) / total,
        gpu_util_ratio=None if gpus["gpu_util"] is None else _mean(gpus["gpu_util"]) / 100.0,
        vram_used_bytes=None if gpus["fb_used"] is None else sum(gpus["fb_used"]) * MIB,
        free_gpu_slots=int(sum(max(v, 0.0) for v in slots.values())),
        slo_p95_s=inp.settings.slo_p95_s,
        vram_free_bytes=None if gpus["fb_free"] is None else sum(gpus["fb_free"]) * MIB,
        node_cpu_free_cores=_min_over(r.per("node_cpu_free", "node"), hosting),
        node_memory_free_bytes=_min_over(r.per("node_memory_free", "node"), hosting),
        last_change_age_s=change_age(
            inp.results.get("generation_history"),  # raw points: all of the window, not fresh ones
            r.one("deployment_created"),
            inp.config_change,
            inp.now_s,
            inp.stale_after_s,
        ),
    )
    for name in OPTIONAL_FIELDS:
        if getattr(obs, name) is None:
            missing.append(name)
    diagnostics = {
        "latency_avg_s": _weighted(r.per("latency_avg", "pod"), rates),
        "compute_infer_avg_s": _weighted(r.per("compute_infer_avg", "pod"), rates),
    }
    newest_s = r.newest_s if math.isfinite(r.newest_s) else inp.now_s
    return Built(obs, tuple(sorted(missing)), newest_s, diagnostics)


OPTIONAL_FIELDS = (
    "request_rate_rps",
    "p95_latency_s",
    "success_ratio",
    "gpu_util_ratio",
    "vram_used_bytes",
    "vram_free_bytes",
    "node_cpu_free_cores",
    "node_memory_free_bytes",
    "last_change_age_s",
)
"""Observation fields that may be None (listed in ``missing_inputs`` when they are)."""

POD_FIELDS = {
    "cpu_usage_cores": "cpu_usage",
    "queue_time_avg_s": "queue_time_avg",
    "concurrency": "concurrency",
    "memory_usage_bytes": "memory_working_set",
}
"""Optional PodMetrics field → the query that fills it (request rate: success + failure)."""


def _pods(
    r: _Reader,
    names: list[str],
    ready: dict[str, float],
    created: dict[str, float],
    missing: list[str],
) -> tuple[list[PodMetrics], dict[str, float], dict[str, float]]:
    """PodMetrics of the Deployment's pods, and success / failure rates of the pods reporting
    both (a pod's request rate is their sum; one without the other is missing)."""
    per = {f: r.per(q, "pod") or {} for f, q in POD_FIELDS.items()}
    ok = r.per("success_rate", "pod") or {}
    failed = r.per("failure_rate", "pod") or {}
    ready_time = r.per("pod_ready_time", "pod") or {}
    success = {p: ok[p] for p in names if p in ok and p in failed}
    failure = {p: failed[p] for p in success}
    pods = []
    for p in names:
        values = {f: per[f].get(p) for f in POD_FIELDS}
        missing += [f"{f}@{p}" for f, v in values.items() if v is None]
        if p not in success:
            missing.append(f"request_rate_rps@{p}")
        is_ready = ready[p] >= 0.5
        pods.append(
            PodMetrics(
                name=p,
                ready=is_ready,
                start_time_s=created[p],
                ready_time_s=ready_time.get(p) if is_ready else None,
                request_rate_rps=success[p] + failure[p] if p in success else None,
                **values,
            )
        )
    return pods, success, failure


def _requests(
    newest: str | None, cpu: dict[str, float], mem: dict[str, float]
) -> tuple[float, float] | None:
    """The newest pod's requests (it carries the Deployment's current template)."""
    if newest is None or newest not in cpu or newest not in mem:
        return None
    return cpu[newest], mem[newest]


def _limit(limits: dict[str, float] | None, pod: str | None) -> float:
    """A pod's CPU limit; no limit series from a fresh kube-state-metrics = no limit (inf)."""
    if limits is None or pod is None:
        return math.inf
    return limits.get(pod, math.inf)


def _limit_bytes(limits: dict[str, float] | None, pod: str | None) -> int:
    """A pod's memory limit in bytes; 0 stands for "no limit" (Observation's field is an int)."""
    value = _limit(limits, pod)
    return int(value) if math.isfinite(value) else 0


def _gpus(r: _Reader, label: str, hosting: list[str]) -> dict[str, list[float] | None]:
    """DCGM values of the GPUs on nodes that host replicas (None: no such GPU reports)."""
    out: dict[str, list[float] | None] = {}
    for name in ("gpu_util", "fb_used", "fb_free"):
        rows = r.series(name) or []
        values = [s.value for s in rows if s.labels.get(label) in hosting]
        out[name] = values or None
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _min_over(values: dict[str, float] | None, keys: list[str]) -> float | None:
    known = [values[k] for k in keys if values is not None and k in values]
    return min(known) if known else None


def _weighted(values: dict[str, float] | None, weights: dict[str, float]) -> float | None:
    """Request-weighted mean over pods that report both (the twin weights its p95 the same)."""
    if not values:
        return None
    pairs = [(v, weights[p]) for p, v in values.items() if p in weights and weights[p] > 0]
    total = sum(w for _, w in pairs)
    if total <= 0:
        return None
    return sum(v * w for v, w in pairs) / total


# --------------------------------------------------------------------- time since last change
def change_age(
    history: Sequence[Sample] | None,
    created_s: float | None,
    config_change: tuple[float, float],
    now_s: float,
    stale_after_s: float,
) -> float | None:
    """Seconds since any managed setting changed, or None when the data cannot tell.

    Two sources, each an interval [lower, upper] of its age: the Deployment's
    ``metadata.generation`` (every spec change: replicas, resources) over the raw samples of
    the last 11 min, and Triton's model config as the collector saw it. The age is the
    minimum over sources; it is known when that minimum's interval closes, or when even its
    lower bound reaches :data:`ecrl.schema.AGE_CAP_S` (the schema caps the feature there).
    """
    spec = _generation_age(history, created_s, now_s, stale_after_s)
    lo = min(spec[0], config_change[0])
    hi = min(spec[1], config_change[1])
    if hi - lo <= 1e-9:
        return max(hi, 0.0)
    if lo >= AGE_CAP_S:
        return AGE_CAP_S
    return None


def _generation_age(
    history: Sequence[Sample] | None, created_s: float | None, now_s: float, stale_after_s: float
) -> tuple[float, float]:
    """[lower, upper] bound of the seconds since the Deployment's generation last changed."""
    upper = math.inf if created_s is None else max(now_s - created_s, 0.0)
    points = sorted((s.timestamp_s, s.value) for s in history or () if s.timestamp_s is not None)
    if not points or now_s - points[-1][0] > stale_after_s:
        return 0.0, upper  # no fresh history: anything from 0 up to the creation
    for (_, before), (ts, value) in zip(points[-2::-1], points[:0:-1], strict=True):
        if value != before:
            age = max(now_s - ts, 0.0)
            return age, age
    first_ts, first_generation = points[0]
    if created_s is not None and created_s >= first_ts - stale_after_s and first_generation == 1:
        return upper, upper  # created inside the window, never changed since (generation 1)
    return min(now_s - first_ts, upper), upper


class ChangeTracker:
    """Remembers when Triton's model config last changed, as seen from tick to tick."""

    def __init__(self) -> None:
        self._first_seen_s: float | None = None
        self._last: Batching | None = None
        self._changed_s: float | None = None

    def update(self, batching: Batching | None, now_s: float) -> tuple[float, float]:
        """Record this tick's config (None: unread) and return the [lower, upper] age bounds."""
        if batching is not None:
            if self._first_seen_s is None:
                self._first_seen_s = now_s
            elif batching != self._last:
                self._changed_s = now_s
            self._last = batching
        if self._changed_s is not None:
            age = now_s - self._changed_s
            return age, age
        if self._first_seen_s is None:
            return 0.0, math.inf
        return now_s - self._first_seen_s, math.inf
