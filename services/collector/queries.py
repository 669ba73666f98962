"""The PromQL behind every :class:`~ecrl.policies.base.Observation` input, written once.

Each :class:`Query` names its input, the exporter the metric comes from, whether the
observation can be built without it (``required``), the value PromQL and a *freshness* PromQL.
Prometheus answers an instant query with the evaluation time, not the time of the samples
behind it, so the freshness query reads the real sample times with ``timestamp()`` on the raw
series, grouped by the same labels as the value (``min``: the oldest sample of a group is
what makes the group stale). ``timestamp()`` of a series that Prometheus marked stale (its
target vanished or a scrape failed) returns nothing, so a value without a fresh partner counts
as missing (see :mod:`.observation`).

Queries select by namespace (and Deployment / model); which pods belong to the Deployment is
decided by the ``pods`` query (kube-state-metrics owner chain Pod → ReplicaSet → Deployment)
and applied in Python, so every query is a fixed string after :func:`render`. Queries do not
name scrape jobs (they differ between the testbed and a real cluster); where two jobs may
export the same series (kubelet resource metrics and cAdvisor), ``max by (pod, container)``
first removes the duplicates.

Sources, with the names as the exporters write them:

- kube-state-metrics v2 (``kube_*``; docs/metrics/workload/*.md of kube-state-metrics):
  Deployment spec, pod ownership, readiness, creation time, container requests/limits,
  node allocatable;
- Triton's ``/metrics`` (user_guide/metrics.md): cumulative counters without ``_total``,
  durations in microseconds, per model and version;
- kubelet resource metrics ``/metrics/resource`` (what metrics-server reads; kwok emulates it
  on the testbed): ``container_cpu_usage_seconds_total``, ``container_memory_working_set_bytes``;
- dcgm-exporter (``DCGM_FI_*``): utilization in %, framebuffer in MiB, per GPU, with the
  node in its ``Hostname`` label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")
"""``${name}`` placeholders; PromQL's own ``$1`` (label_replace) carries no braces."""

NS = 'namespace="${namespace}"'
TRITON = '{namespace="${namespace}",model="${model}"}'
CONTAINERS = '{namespace="${namespace}",container!="",container!="POD"}'
RUNNING = '(max by (namespace, pod) (kube_pod_status_phase{phase=~"Pending|Running"}) == 1)'
"""Pods that hold their requests on a node (the scheduler counts Pending-but-bound ones too)."""


@dataclass(frozen=True)
class Query:
    """One input: its PromQL, the freshness PromQL, and where the metric comes from."""

    name: str
    promql: str
    freshness: str | None
    """PromQL of the sample times, same grouping; None for a range selector (its points carry
    their own timestamps)."""
    by: tuple[str, ...]
    """Labels that identify one result series (join key between value and freshness)."""
    required: bool
    source: str
    doc: str


def _per_pod(name: str, value: str, raw: str, required: bool, source: str, doc: str) -> Query:
    """A per-pod input whose freshness is the oldest sample of ``raw`` in each pod."""
    return Query(name, value, f"min by (pod) (timestamp({raw}))", ("pod",), required, source, doc)


def _requests(resource: str, kind: str, required: bool, doc: str) -> Query:
    raw = f'kube_pod_container_resource_{kind}{{{NS},resource="{resource}"}}'
    return _per_pod(
        f"pod_{resource}_{kind.removesuffix('s')}",
        f"sum by (pod) ({raw})",
        raw,
        required,
        "kube-state-metrics",
        doc,
    )


def _node_free(name: str, resource: str, required: bool, doc: str) -> Query:
    """Allocatable minus the requests of the pods bound to the node, per node."""
    alloc = f'sum by (node) (kube_node_status_allocatable{{resource="{resource}"}})'
    used = (
        f'sum by (node) (kube_pod_container_resource_requests{{resource="{resource}"}}'
        f" * on (namespace, pod) group_left () {RUNNING})"
    )
    return Query(
        name,
        f"{alloc} - ({used} or 0 * {alloc})",
        f'min by (node) (timestamp(kube_node_status_allocatable{{resource="{resource}"}}))',
        ("node",),
        required,
        "kube-state-metrics",
        doc,
    )


def _gpu(name: str, metric: str, doc: str) -> Query:
    return Query(
        name,
        f"max by (${{gpu_node_label}}, gpu) ({metric})",
        f"min by (${{gpu_node_label}}, gpu) (timestamp({metric}))",
        ("${gpu_node_label}", "gpu"),
        False,
        "dcgm-exporter",
        doc,
    )


def _triton_rate(metric: str) -> str:
    return f"sum by (pod) (rate({metric}{TRITON}[${{window}}]))"


QUERIES: tuple[Query, ...] = (
    # ---- the Deployment and its pods (kube-state-metrics) -------------------------------
    Query(
        "pods",
        # Pod → ReplicaSet → Deployment (kube_pod_owner, kube_replicaset_owner), with the node
        # from kube_pod_info; pods being deleted or finished are not replicas any more.
        # (group_left keeps the left side's labels: a one-to-one `on` would keep only `pod`)
        f"max by (pod, node) (kube_pod_info{{{NS}}})"
        " * on (pod) group_left () max by (pod) ("
        f'kube_pod_owner{{{NS},owner_kind="ReplicaSet"}}'
        " * on (owner_name) group_left () max by (owner_name) (label_replace("
        f'kube_replicaset_owner{{{NS},owner_kind="Deployment",owner_name="${{deployment}}"}},'
        ' "owner_name", "$1", "replicaset", "(.*)")))'
        f" unless on (pod) kube_pod_deletion_timestamp{{{NS}}}"
        f' unless on (pod) (max by (pod) (kube_pod_status_phase{{{NS},phase=~"Succeeded|Failed"}})'
        " == 1)",
        f"min by (pod) (timestamp(kube_pod_info{{{NS}}}))",
        ("pod",),
        True,
        "kube-state-metrics",
        "the Deployment's pods and their nodes",
    ),
    Query(
        "desired_replicas",
        f'max(kube_deployment_spec_replicas{{{NS},deployment="${{deployment}}"}})',
        f'min(timestamp(kube_deployment_spec_replicas{{{NS},deployment="${{deployment}}"}}))',
        (),
        True,
        "kube-state-metrics",
        "spec.replicas",
    ),
    Query(
        "deployment_created",
        f'max(kube_deployment_created{{{NS},deployment="${{deployment}}"}})',
        f'min(timestamp(kube_deployment_created{{{NS},deployment="${{deployment}}"}}))',
        (),
        False,
        "kube-state-metrics",
        "creation time (unix s): bounds the time since the last change",
    ),
    Query(
        "generation_history",
        # raw samples: the time the generation last changed is read from them in Python
        f'kube_deployment_metadata_generation{{{NS},deployment="${{deployment}}"}}[${{history}}]',
        None,
        (),
        False,
        "kube-state-metrics",
        "metadata.generation over the last 11 min (spec changes: replicas, resources)",
    ),
    _per_pod(
        "pod_ready",
        f'max by (pod) (kube_pod_status_ready{{{NS},condition="true"}})',
        f'kube_pod_status_ready{{{NS},condition="true"}}',
        True,
        "kube-state-metrics",
        "1 = Ready condition true",
    ),
    _per_pod(
        "pod_created",
        f"max by (pod) (kube_pod_created{{{NS}}})",
        f"kube_pod_created{{{NS}}}",
        True,
        "kube-state-metrics",
        "creation time (unix s)",
    ),
    _per_pod(
        "pod_ready_time",
        f"max by (pod) (kube_pod_status_ready_time{{{NS}}})",
        f"kube_pod_status_ready_time{{{NS}}}",
        False,
        "kube-state-metrics",
        "when the pod turned Ready (unix s; exported while it is Ready)",
    ),
    _requests("cpu", "requests", True, "CPU request of the pod (sum over containers, cores)"),
    _requests("memory", "requests", True, "memory request of the pod (bytes)"),
    _requests("cpu", "limits", False, "CPU limit of the pod (absent: no limit)"),
    _requests("memory", "limits", False, "memory limit of the pod (absent: no limit)"),
    # ---- nodes (kube-state-metrics) -----------------------------------------------------
    Query(
        "free_gpu_slots",
        # per schedulable Ready node: allocatable GPUs (time-sliced slots) − GPUs requested
        f"clamp_min({_node_free('', '${gpu_resource}', True, '').promql}, 0)"
        " unless on (node) (max by (node) (kube_node_spec_unschedulable) == 1)"
        " and on (node) (max by (node)"
        ' (kube_node_status_condition{condition="Ready",status="true"}) == 1)',
        'min by (node) (timestamp(kube_node_status_allocatable{resource="${gpu_resource}"}))',
        ("node",),
        True,
        "kube-state-metrics",
        "GPU slots a new pod could still get, per node",
    ),
    _node_free("node_cpu_free", "cpu", False, "unrequested allocatable CPU per node (cores)"),
    _node_free("node_memory_free", "memory", False, "unrequested allocatable memory per node"),
    # ---- Triton, per pod ------------------------------------------------------------------
    _per_pod(
        "success_rate",
        _triton_rate("nv_inference_request_success"),
        f"nv_inference_request_success{TRITON}",
        False,
        "triton",
        "successful requests per second",
    ),
    _per_pod(
        "failure_rate",
        _triton_rate("nv_inference_request_failure"),  # summed over Triton's `reason` label
        f"nv_inference_request_failure{TRITON}",
        False,
        "triton",
        "failed requests per second",
    ),
    _per_pod(
        "queue_time_avg",
        # Triton's own recipe: queue time accrues per successful request (NaN when idle)
        f"{_triton_rate('nv_inference_queue_duration_us')}"
        f" / {_triton_rate('nv_inference_request_success')} / 1e6",
        f"nv_inference_queue_duration_us{TRITON}",
        False,
        "triton",
        "mean queue time per request over the window (s)",
    ),
    _per_pod(
        "concurrency",
        # Little's law: d(sum of request durations)/dt = mean number of requests in flight
        # (queued + executing); nv_inference_pending_request_count is queued only, instantaneous
        f"{_triton_rate('nv_inference_request_duration_us')} / 1e6",
        f"nv_inference_request_duration_us{TRITON}",
        False,
        "triton",
        "mean in-flight requests over the window",
    ),
    _per_pod(
        "latency_avg",
        f"{_triton_rate('nv_inference_request_duration_us')}"
        f" / {_triton_rate('nv_inference_request_success')} / 1e6",
        f"nv_inference_request_duration_us{TRITON}",
        False,
        "triton",
        "mean request latency in the server (s; diagnostics, not in the state)",
    ),
    _per_pod(
        "compute_infer_avg",
        f"{_triton_rate('nv_inference_compute_infer_duration_us')}"
        f" / {_triton_rate('nv_inference_request_success')} / 1e6",
        f"nv_inference_compute_infer_duration_us{TRITON}",
        False,
        "triton",
        "mean model compute time per request (s; diagnostics, not in the state)",
    ),
    _per_pod(
        "p95_latency",
        # Triton has no latency histogram; its summary (--metrics-config
        # summary_latencies=true) has quantiles over a sliding window. Without it: missing.
        'max by (pod) (nv_inference_request_summary_us{namespace="${namespace}",'
        'model="${model}",quantile=~"0[.]950*"}) / 1e6',
        'nv_inference_request_summary_us{namespace="${namespace}",model="${model}",'
        'quantile=~"0[.]950*"}',
        False,
        "triton",
        "p95 request latency (s) from Triton's latency summary",
    ),
    # ---- kubelet resource metrics, per pod -----------------------------------------------
    _per_pod(
        "cpu_usage",
        "sum by (pod) (max by (pod, container)"
        f" (rate(container_cpu_usage_seconds_total{CONTAINERS}[${{window}}])))",
        f"container_cpu_usage_seconds_total{CONTAINERS}",
        False,
        "kubelet-resource",
        "CPU usage (cores), as metrics-server computes it",
    ),
    _per_pod(
        "memory_working_set",
        f"sum by (pod) (max by (pod, container) (container_memory_working_set_bytes{CONTAINERS}))",
        f"container_memory_working_set_bytes{CONTAINERS}",
        False,
        "kubelet-resource",
        "working set (bytes)",
    ),
    # ---- DCGM, per GPU -------------------------------------------------------------------
    _gpu("gpu_util", "DCGM_FI_DEV_GPU_UTIL", "GPU utilization (%)"),
    _gpu("fb_used", "DCGM_FI_DEV_FB_USED", "framebuffer used (MiB)"),
    _gpu("fb_free", "DCGM_FI_DEV_FB_FREE", "framebuffer free (MiB)"),
)

BY_NAME = {q.name: q for q in QUERIES}
REQUIRED = tuple(q.name for q in QUERIES if q.required)


def ksm_resource(name: str) -> str:
    """kube-state-metrics' label value of a resource (``nvidia.com/gpu`` → ``nvidia_com_gpu``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _fill(text: str, values: dict[str, str]) -> str:
    missing = sorted({m for m in PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise KeyError(f"no value for placeholder(s) {missing}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def render(values: dict[str, str]) -> tuple[Query, ...]:
    """Every query with its ``${...}`` placeholders filled (namespace, deployment, model, …).

    Values must be safe inside a PromQL string (the config validates names as DNS labels and
    durations as ``<n>s``); a forgotten placeholder raises rather than querying nothing.
    """
    return tuple(
        Query(
            q.name,
            _fill(q.promql, values),
            None if q.freshness is None else _fill(q.freshness, values),
            tuple(_fill(b, values) for b in q.by),
            q.required,
            q.source,
            q.doc,
        )
        for q in QUERIES
    )
