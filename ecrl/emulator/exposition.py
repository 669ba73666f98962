"""Prometheus text exposition in the exact names and labels Triton and dcgm-exporter use.

Triton's ``/metrics`` (docs: "Metrics", user_guide/metrics.md) exposes cumulative counters
without a ``_total`` suffix (``nv_inference_request_success{model,version}``, durations in
microseconds) and a pending-request gauge; dcgm-exporter exposes ``DCGM_FI_*`` gauges per GPU
with ``gpu``, ``UUID``, ``device``, ``modelName`` and ``Hostname`` labels. Every series here
also carries ``emulated="true"`` so no dashboard can mistake it for hardware.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ecrl import serving
from ecrl.emulator.fleet import Fleet
from ecrl.emulator.pod import EmulatedPod, Gpu

EMULATED = 'emulated="true"'

TRITON_HELP = {
    "nv_inference_request_success": ("counter", "Number of successful inference requests"),
    "nv_inference_request_failure": ("counter", "Number of failed inference requests"),
    "nv_inference_count": ("counter", "Number of inferences performed"),
    "nv_inference_exec_count": ("counter", "Number of model executions performed"),
    "nv_inference_request_duration_us": ("counter", "Cumulative inference request duration"),
    "nv_inference_queue_duration_us": ("counter", "Cumulative inference queuing duration"),
    "nv_inference_compute_input_duration_us": ("counter", "Cumulative compute input duration"),
    "nv_inference_compute_infer_duration_us": ("counter", "Cumulative compute inference duration"),
    "nv_inference_compute_output_duration_us": ("counter", "Cumulative inference compute output"),
    "nv_inference_pending_request_count": ("gauge", "Instantaneous number of pending requests"),
    "nv_cpu_utilization": ("gauge", "CPU utilization rate [0.0 - 1.0]"),
    "nv_cpu_memory_used_bytes": ("gauge", "CPU memory used, bytes"),
}

DCGM_HELP = {
    "DCGM_FI_DEV_GPU_UTIL": "GPU utilization (in %).",
    "DCGM_FI_DEV_FB_USED": "Framebuffer memory used (in MiB).",
    "DCGM_FI_DEV_FB_FREE": "Framebuffer memory free (in MiB).",
    "DCGM_FI_DEV_POWER_USAGE": "Power draw (in W).",
    "DCGM_FI_DEV_GPU_TEMP": "GPU temperature (in C).",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "Ratio of time the graphics engine is active.",
}


def _labels(pairs: dict[str, str]) -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items())
    return "{" + body + ("," if body else "") + EMULATED + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("+Inf" if x > 0 else "-Inf")
    return repr(float(x)) if x != int(x) else f"{int(x)}"


def triton_pod(pod: EmulatedPod) -> str:
    """One pod's ``/metrics`` as Triton serves it."""
    mv = {"model": serving.MODEL_NAME, "version": serving.MODEL_VERSION}
    rows: list[tuple[str, dict[str, str], float]] = [
        ("nv_inference_request_success", mv, pod.success),
        *(
            ("nv_inference_request_failure", {**mv, "reason": reason}, pod.failure.get(reason, 0))
            for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER", "TIMEOUT")
        ),
        ("nv_inference_count", mv, pod.inference_count),
        ("nv_inference_exec_count", mv, pod.exec_count),
        ("nv_inference_request_duration_us", mv, round(pod.request_us)),
        ("nv_inference_queue_duration_us", mv, round(pod.queue_us)),
        ("nv_inference_compute_input_duration_us", mv, round(pod.compute_input_us)),
        ("nv_inference_compute_infer_duration_us", mv, round(pod.compute_infer_us)),
        ("nv_inference_compute_output_duration_us", mv, round(pod.compute_output_us)),
        ("nv_inference_pending_request_count", mv, pod.pending),
        ("nv_cpu_utilization", {}, pod.cpu_usage_cores / max(pod.cpu_limit_cores, 1e-9)),
        ("nv_cpu_memory_used_bytes", {}, pod.memory_used_bytes()),
    ]
    out = _render(rows, {k: v for k, v in TRITON_HELP.items()})
    return out + _summary(
        "nv_inference_request_summary_us",
        "Summary of inference request duration in microseconds",
        mv,
        pod.latency_quantiles_us(SUMMARY_QUANTILES),
        pod.request_us,
        pod.success,
    )


SUMMARY_QUANTILES = (0.5, 0.9, 0.95, 0.99)
"""Triton's default ``summary_quantiles`` (``--metrics-config summary_latencies=true``)."""


def _summary(
    name: str, text: str, labels: dict[str, str], values: list[float], total: float, count: int
) -> str:
    lines = [f"# HELP {name} {text}", f"# TYPE {name} summary"]
    for q, v in zip(SUMMARY_QUANTILES, values, strict=True):
        lines.append(f"{name}{_labels({**labels, 'quantile': str(q)})} {_fmt(v)}")
    lines.append(f"{name}_sum{_labels(labels)} {_fmt(round(total))}")
    lines.append(f"{name}_count{_labels(labels)} {count}")
    return "\n".join(lines) + "\n"


def dcgm_node(fleet: Fleet, node: str) -> str:
    """dcgm-exporter's ``/metrics`` for every GPU of ``node``."""
    rows: list[tuple[str, dict[str, str], float]] = []
    gp = fleet.profile.gpu
    for gpu in sorted((g for g in fleet.gpus.values() if g.node == node), key=lambda g: g.index):
        util = gpu.util()
        used_mib = gpu.vram_used(fleet.profile) / 2**20
        lab = _gpu_labels(gpu)
        rows += [
            ("DCGM_FI_DEV_GPU_UTIL", lab, round(100.0 * util)),
            ("DCGM_FI_DEV_FB_USED", lab, round(used_mib)),
            ("DCGM_FI_DEV_FB_FREE", lab, round(max(gpu.vram_bytes / 2**20 - used_mib, 0.0))),
            (
                "DCGM_FI_DEV_POWER_USAGE",
                lab,
                round(gp.power_idle_w + (gp.power_max_w - gp.power_idle_w) * util, 3),
            ),
            ("DCGM_FI_DEV_GPU_TEMP", lab, round(gpu.temp_c)),
            ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", lab, round(util, 6)),
        ]
    return _render(rows, {k: ("gauge", v) for k, v in DCGM_HELP.items()})


def _gpu_labels(gpu: Gpu) -> dict[str, str]:
    return {
        "gpu": str(gpu.index),
        "UUID": gpu.uuid,
        "device": f"nvidia{gpu.index}",
        "modelName": gpu.product,
        "Hostname": gpu.node,
    }


def _render(
    rows: Iterable[tuple[str, dict[str, str], float]], helps: dict[str, tuple[str, str]]
) -> str:
    out: list[str] = []
    seen: set[str] = set()
    for name, labels, value in rows:
        if name not in seen:
            seen.add(name)
            kind, text = helps[name]
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        out.append(f"{name}{_labels(labels)} {_fmt(value)}")
    return "\n".join(out) + "\n"
