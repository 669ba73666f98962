"""What both protocol front-ends do with a decoded request: route, serve, account, answer.

The HTTP (``http_api``) and gRPC (``grpc_api``) front-ends only translate wire formats;
routing to a pod, waiting for the emulated service, the model's metadata and the emulator's
own telemetry are here, once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecrl import serving
from ecrl.emulator import telemetry, tensors
from ecrl.emulator.fleet import Fleet
from ecrl.emulator.pod import InferError, InferTiming

SERVER_NAME = "triton"
SERVER_VERSION = "2.49.0"
"""The Triton release in nvcr.io/nvidia/tritonserver:24.08 (deploy/baseline uses that image)."""
EXTENSIONS = [
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "cuda_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
]


@dataclass(frozen=True)
class Answer:
    """The result of one inference: output logits and where/how it was served."""

    output: np.ndarray
    timing: InferTiming
    pod: str


def check_model(name: str, version: str = "") -> None:
    if name != serving.MODEL_NAME:
        raise LookupError(f"Request for unknown model: '{name}' is not found")
    if version not in ("", serving.MODEL_VERSION):
        raise LookupError(f"Request for unknown model: '{name}' version {version} is not found")


async def infer(fleet: Fleet, x: np.ndarray, pod_name: str | None, protocol: str) -> Answer:
    """Serve ``x`` ([batch,3,224,224]) on a pod of the fleet; raises :class:`InferError`."""
    try:
        pod = fleet.route(pod_name)
        timing = await pod.infer(int(x.shape[0]))
    except InferError as exc:
        telemetry.REQUESTS.labels(protocol, exc.reason.lower()).inc()
        raise
    telemetry.REQUESTS.labels(protocol, "success").inc()
    telemetry.LATENCY.labels(protocol).observe(timing.total_s)
    return Answer(tensors.logits(x), timing, pod.name)


def model_metadata() -> dict:
    """KServe v2 model metadata."""
    return {
        "name": serving.MODEL_NAME,
        "versions": [serving.MODEL_VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {
                "name": serving.INPUT_NAME,
                "datatype": serving.DATATYPE,
                "shape": [-1, *serving.INPUT_SHAPE],
            }
        ],
        "outputs": [
            {"name": serving.OUTPUT_NAME, "datatype": serving.DATATYPE, "shape": [-1, 1000]}
        ],
    }


def model_config(fleet: Fleet, pod_name: str | None = None) -> dict:
    cfg = fleet.pods[pod_name].config if pod_name in fleet.pods else fleet.config
    return cfg.as_model_config(serving.MODEL_NAME, serving.INPUT_NAME, serving.OUTPUT_NAME)


def statistics(fleet: Fleet) -> dict:
    """Triton's model statistics summed over the pods (ns, as the statistics extension)."""
    pods = list(fleet.pods.values())
    ok = sum(p.success for p in pods)

    def dur(count: int, us: float) -> dict:
        return {"count": count, "ns": round(us * 1000)}

    return {
        "model_stats": [
            {
                "name": serving.MODEL_NAME,
                "version": serving.MODEL_VERSION,
                "inference_count": sum(p.inference_count for p in pods),
                "execution_count": sum(p.exec_count for p in pods),
                "inference_stats": {
                    "success": dur(ok, sum(p.request_us for p in pods)),
                    "fail": dur(sum(sum(p.failure.values()) for p in pods), 0.0),
                    "queue": dur(ok, sum(p.queue_us for p in pods)),
                    "compute_input": dur(ok, sum(p.compute_input_us for p in pods)),
                    "compute_infer": dur(ok, sum(p.compute_infer_us for p in pods)),
                    "compute_output": dur(ok, sum(p.compute_output_us for p in pods)),
                },
            }
        ]
    }
