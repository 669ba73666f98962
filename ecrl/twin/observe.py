"""Read the twin like a real cluster is read: policy observations and production metrics.

Metric names are the ones DCGM exporter, Triton, kube-state-metrics and cAdvisor export, so
the collector uses one PromQL for the twin-fed and the real Prometheus. Samples carry the
label ``emulated="true"`` — the twin never pretends to be hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecrl.experiment.kpis import SERIES_COLUMNS
from ecrl.policies.base import Observation, PodMetrics
from ecrl.twin.twin import HOLDING, READY, STARTING, UNSCHEDULABLE, StepResult, Twin

MODEL = "mobilenetv4"
DEPLOYMENT = "mobilenetv4-triton"
NAMESPACE = "ecrl"
METRICS_DELAY_S = 15.0
"""A new pod has no usage metrics until metrics-server has scraped it twice (15 s resolution)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One Prometheus sample: metric name, labels and value."""

    name: str
    labels: dict[str, str]
    value: float


def pod_name(i: int) -> str:
    return f"{DEPLOYMENT}-{i}"


def observation(tw: Twin, env: int = 0) -> Observation:
    """The policy's view of environment ``env`` (metrics missing while a pod has none yet)."""
    d = tw.cluster.deployment
    pods = []
    for i in range(tw.n_pods):
        ph = tw.phase[env, i]
        if ph not in HOLDING:
            if ph == UNSCHEDULABLE:
                pods.append(PodMetrics(pod_name(i), False, float(tw.created_s[env, i]), None, None))
            continue
        has_metrics = tw.metrics_age[env, i] >= METRICS_DELAY_S
        ready = ph == READY
        pods.append(
            PodMetrics(
                name=pod_name(i),
                ready=bool(ready),
                start_time_s=float(tw.created_s[env, i]),
                ready_time_s=float(tw.ready_s[env, i]) if ready else None,
                cpu_usage_cores=float(tw.cpu_ema[env, i]) if has_metrics else None,
                queue_time_avg_s=float(tw.qtime_ema[env, i]) if has_metrics and ready else None,
                concurrency=float(tw.conc_ema[env, i]) if has_metrics and ready else None,
                request_rate_rps=float(tw.rate_ema[env, i]) if has_metrics and ready else None,
                memory_usage_bytes=float(tw.mem_used[env, i]) if has_metrics else None,
            )
        )
    served = tw.window_served[env]
    p95 = tw.window_p95[env]
    ok = (served > 0) & ~np.isnan(p95)
    win_p95 = float(np.average(p95[ok], weights=served[ok])) if ok.any() else None
    done = served.sum() + tw.window_failed[env].sum()
    success = float(served.sum() / done) if done > 0 else None
    holding_gpus = np.unique(tw.pod_gpu[env][tw.pod_gpu[env] >= 0])
    gpu_util = float(tw.gpu_util[env, holding_gpus].mean()) if len(holding_gpus) else None
    rate = float(tw.rate_ema[env].sum())
    cpu_free, mem_free = node_free(tw, env)
    vram = vram_used(tw, env)
    return Observation(
        time_s=tw.t,
        pods=tuple(pods),
        desired_replicas=int(tw.desired[env]),
        min_replicas=d.min_replicas,
        max_replicas=d.max_replicas,
        cpu_request_cores=float(tw.cpu_req[env]),
        cpu_limit_cores=float(tw.cpu_req[env]),
        memory_request_bytes=int(tw.mem_req[env]),
        memory_limit_bytes=int(tw.mem_req[env]),
        max_batch_size=int(tw.max_batch[env]),
        batch_delay_s=float(tw.delay_s[env]),
        instance_count=int(tw.instances[env]),
        request_rate_rps=rate,
        p95_latency_s=win_p95,
        success_ratio=success,
        gpu_util_ratio=gpu_util,
        vram_used_bytes=float(vram.sum()),
        free_gpu_slots=int(free_gpu_slots(tw, env)),
        slo_p95_s=tw.cluster.slo_p95_s,
        vram_free_bytes=float((tw.gpu_vram - vram)[holding_gpus].sum())
        if len(holding_gpus)
        else None,
        node_cpu_free_cores=cpu_free,
        node_memory_free_bytes=mem_free,
        last_change_age_s=float(tw.t - tw.changed_at_s[env]),
    )


def node_free(tw: Twin, env: int) -> tuple[float | None, float | None]:
    """Smallest unrequested CPU and memory over the nodes hosting replicas (None if none)."""
    per_node = tw.pods_per_node(tw.pods_per_gpu(tw.holding()))[env]
    hosting = per_node > 0
    if not hosting.any():
        return None, None
    cpu = tw.node_cpu - per_node * tw.cpu_req[env]
    mem = tw.node_mem - per_node * tw.mem_req[env]
    return float(cpu[hosting].min()), float(mem[hosting].min())


def vram_used(tw: Twin, env: int) -> np.ndarray:
    """Framebuffer in use per GPU (bytes): each pod holding the GPU has its model loaded."""
    per = tw.profile.vram_per_replica_bytes(tw.instances[env], tw.max_batch[env])
    loaded = (tw.phase == READY) | (tw.phase == STARTING)
    return tw.pods_per_gpu(loaded)[env] * per


def free_gpu_slots(tw: Twin, env: int) -> int:
    return int((tw.gpu_slots - tw.pods_per_gpu(tw.holding())[env]).sum())


def series_row(tw: Twin, r: StepResult, env: int = 0) -> dict[str, float]:
    """One second of the per-second series (:data:`SERIES_COLUMNS`)."""
    holding = tw.holding()[env]
    n_hold = int(holding.sum())
    cpu_req_total = tw.cpu_req[env] * n_hold
    mem_req_total = tw.mem_req[env] * n_hold
    cpu_used = float(tw.cpu_ema[env][holding].sum()) if n_hold else 0.0
    row = {
        "time_s": float(r.time_s[env]),
        "users": float(r.users[env]),
        "offered_rps": float(r.arrivals[env]) / tw.dt_s,
        "throughput_rps": float(r.served[env]) / tw.dt_s,
        "failure_rps": float(r.failed[env]) / tw.dt_s,
        "latency_avg_s": float(r.latency_avg_s[env]),
        "latency_p95_s": float(r.latency_p95_s[env]),
        "latency_p99_s": float(r.latency_p99_s[env]),
        "replicas_desired": float(tw.desired[env]),
        "replicas_ready": float((tw.phase[env] == READY).sum()),
        "replicas_pending": float(((tw.phase[env] != READY) & (tw.phase[env] > 0)).sum()),
        "gpu_replicas": float(n_hold),
        "gpu_util_ratio": float(tw.gpu_util[env].mean()),
        "cpu_util_ratio": cpu_used / cpu_req_total if cpu_req_total else np.nan,
        "memory_util_ratio": float(tw.mem_used[env][holding].sum()) / mem_req_total
        if mem_req_total
        else np.nan,
        "vram_used_bytes": float(vram_used(tw, env).sum()),
        "max_batch_size": float(tw.max_batch[env]),
        "instance_count": float(tw.instances[env]),
        "cpu_request_cores": float(tw.cpu_req[env]),
        "memory_request_bytes": float(tw.mem_req[env]),
    }
    assert tuple(row) == SERIES_COLUMNS
    return row


def prometheus_samples(tw: Twin, env: int = 0) -> list[Sample]:
    """Every metric the production exporters would show for environment ``env`` now."""
    out: list[Sample] = []
    emu = {"emulated": "true"}
    gp = tw.profile.gpu
    vram = vram_used(tw, env)
    for g in range(len(tw.gpu_node)):
        node = tw.cluster.nodes[tw.gpu_node[g]].name
        lab = {"gpu": str(g), "Hostname": node, "modelName": gp.name, **emu}
        util = float(tw.gpu_util[env, g])
        out += [
            Sample("DCGM_FI_DEV_GPU_UTIL", lab, round(100.0 * util)),
            Sample("DCGM_FI_DEV_FB_USED", lab, float(vram[g]) / 2**20),
            Sample("DCGM_FI_DEV_FB_FREE", lab, float(tw.gpu_vram[g] - vram[g]) / 2**20),
            Sample(
                "DCGM_FI_DEV_POWER_USAGE",
                lab,
                gp.power_idle_w + (gp.power_max_w - gp.power_idle_w) * util,
            ),
            Sample("DCGM_FI_DEV_GPU_TEMP", lab, float(tw.gpu_temp[env, g])),
        ]
    for i in range(tw.n_pods):
        if tw.phase[env, i] not in HOLDING:
            continue
        lab = {"model": MODEL, "version": "1", "pod": pod_name(i), "namespace": NAMESPACE, **emu}
        out += [
            Sample("nv_inference_request_success", lab, float(tw.c_success[env, i])),
            Sample("nv_inference_request_failure", lab, float(tw.c_failure[env, i])),
            Sample("nv_inference_count", lab, float(tw.c_success[env, i])),
            Sample("nv_inference_exec_count", lab, float(tw.c_exec[env, i])),
            Sample("nv_inference_queue_duration_us", lab, float(tw.c_queue_us[env, i])),
            Sample("nv_inference_compute_infer_duration_us", lab, float(tw.c_compute_us[env, i])),
            Sample("nv_inference_pending_request_count", lab, float(tw.queue[env, i])),
        ]
        clab = {"pod": pod_name(i), "namespace": NAMESPACE, "container": "triton", **emu}
        out += [
            Sample("container_cpu_usage_cores", clab, float(tw.cpu_ema[env, i])),
            Sample("container_memory_working_set_bytes", clab, float(tw.mem_used[env, i])),
            Sample(
                "kube_pod_container_resource_requests",
                {**clab, "resource": "cpu", "unit": "core"},
                float(tw.cpu_req[env]),
            ),
            Sample(
                "kube_pod_container_resource_requests",
                {**clab, "resource": "memory", "unit": "byte"},
                float(tw.mem_req[env]),
            ),
            Sample(
                "kube_pod_status_ready",
                {**clab, "condition": "true"},
                float(tw.phase[env, i] == READY),
            ),
        ]
    dlab = {"deployment": DEPLOYMENT, "namespace": NAMESPACE, **emu}
    holding = tw.holding()[env]
    out += [
        Sample("kube_deployment_spec_replicas", dlab, float(tw.desired[env])),
        Sample("kube_deployment_status_replicas", dlab, float((tw.phase[env] > 0).sum())),
        Sample(
            "kube_deployment_status_replicas_ready", dlab, float((tw.phase[env] == READY).sum())
        ),
        Sample(
            "kube_deployment_status_replicas_unavailable",
            dlab,
            float(((tw.phase[env] > 0) & ~(tw.phase[env] == READY)).sum()),
        ),
        Sample(
            "kube_pod_status_phase",
            {**dlab, "phase": "Pending"},
            float((tw.phase[env] == UNSCHEDULABLE).sum()),
        ),
        Sample("ecrl_twin_gpu_replicas", dlab, float(holding.sum())),
    ]
    return out
