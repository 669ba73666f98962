"""KServe v2 / Triton HTTP front-end (port 8000) and the metrics endpoint (port 8002).

Speaks the wire format ``tritonclient.http`` uses, including Triton's binary tensor
extension (``Inference-Header-Content-Length``: a JSON header followed by raw tensor bytes)
and the model-repository extension (``/v2/repository/models/<m>/load`` with a
``parameters.config`` JSON string = load-with-config). Errors are ``{"error": "..."}`` with
400 for bad requests and 503 when the server is overloaded or has no ready pod, as Triton.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from prometheus_client import generate_latest

from ecrl import serving
from ecrl.emulator import exposition, inference, telemetry, tensors
from ecrl.emulator.fleet import POD_HEADER, Fleet
from ecrl.emulator.pod import InferError

log = logging.getLogger("ecrl.emulator.http")
HEADER_LEN = "Inference-Header-Content-Length"
FLEET = web.AppKey("fleet", Fleet)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _fleet(request: web.Request) -> Fleet:
    return request.app[FLEET]


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200 if _fleet(request).ready() else 400)


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "name": inference.SERVER_NAME,
            "version": inference.SERVER_VERSION,
            "extensions": inference.EXTENSIONS,
            "emulated": True,
        }
    )


def _model(request: web.Request) -> web.Response | None:
    try:
        inference.check_model(request.match_info["model"], request.match_info.get("version", ""))
    except LookupError as exc:
        return _error(400, str(exc))
    return None


async def model_metadata(request: web.Request) -> web.Response:
    return _model(request) or web.json_response(inference.model_metadata())


async def model_ready(request: web.Request) -> web.Response:
    bad = _model(request)
    if bad is not None:
        return bad
    return web.Response(status=200 if _fleet(request).ready() else 400)


async def model_config(request: web.Request) -> web.Response:
    return _model(request) or web.json_response(
        inference.model_config(_fleet(request), request.headers.get(POD_HEADER))
    )


async def model_stats(request: web.Request) -> web.Response:
    return _model(request) or web.json_response(inference.statistics(_fleet(request)))


async def infer(request: web.Request) -> web.Response:
    bad = _model(request)
    if bad is not None:
        return bad
    fleet = _fleet(request)
    body = await request.read()
    try:
        header, binary = _split(body, request.headers.get(HEADER_LEN))
        x, want_binary, req_id = _parse_infer(header, binary, fleet.config.max_batch_size)
    except tensors.TensorError as exc:
        telemetry.REQUESTS.labels("http", "invalid").inc()
        return _error(400, str(exc))
    try:
        ans = await inference.infer(fleet, x, request.headers.get(POD_HEADER), "http")
    except InferError as exc:
        return _error(503 if exc.unavailable else 400, str(exc))
    out = {
        "name": serving.OUTPUT_NAME,
        "datatype": serving.DATATYPE,
        "shape": list(ans.output.shape),
    }
    resp: dict = {
        "model_name": serving.MODEL_NAME,
        "model_version": serving.MODEL_VERSION,
        "outputs": [out],
        "parameters": {"emulated": True, "pod": ans.pod},
    }
    if req_id:
        resp["id"] = req_id
    if not want_binary:
        out["data"] = ans.output.reshape(-1).tolist()
        return web.json_response(resp)
    raw = ans.output.tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps(resp).encode()
    return web.Response(
        body=head + raw,
        headers={HEADER_LEN: str(len(head)), "Content-Type": "application/octet-stream"},
    )


def _split(body: bytes, header_len: str | None) -> tuple[dict, bytes]:
    try:
        n = int(header_len) if header_len is not None else len(body)
        if not 0 < n <= len(body):
            raise ValueError
    except ValueError:
        raise tensors.TensorError(f"invalid {HEADER_LEN}: {header_len!r}") from None
    try:
        header = json.loads(body[:n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise tensors.TensorError(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(header, dict):
        raise tensors.TensorError("the request JSON must be an object")
    return header, body[n:]


def _parse_infer(header: dict, binary: bytes, max_batch: int):
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise tensors.TensorError(
            f"expected 1 input for model '{serving.MODEL_NAME}', got "
            f"{len(inputs) if isinstance(inputs, list) else 'none'}"
        )
    inp = inputs[0]
    shape = inp.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise tensors.TensorError("input 'shape' must be a list of integers")
    batch = tensors.check_input(str(inp.get("name")), str(inp.get("datatype")), shape, max_batch)
    params = inp.get("parameters") or {}
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size != len(binary):
            raise tensors.TensorError(
                f"binary_data_size {size!r} does not match the {len(binary)} bytes sent"
            )
        x = tensors.decode(binary, batch)
    elif "data" in inp:
        x = tensors.from_json_data(inp["data"], batch)
    else:
        raise tensors.TensorError(f"input '{serving.INPUT_NAME}' has no data")
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list):
        raise tensors.TensorError("'outputs' must be a list")
    default_binary = bool((header.get("parameters") or {}).get("binary_data_output", False))
    want_binary = default_binary
    for o in outputs:
        if not isinstance(o, dict) or o.get("name") != serving.OUTPUT_NAME:
            raise tensors.TensorError(
                f"unexpected inference output {o!r} for model '{serving.MODEL_NAME}'"
            )
        want_binary = bool((o.get("parameters") or {}).get("binary_data", default_binary))
    req_id = header.get("id")
    return x, want_binary, req_id if isinstance(req_id, str) else None


async def repository_index(request: web.Request) -> web.Response:
    state = "READY" if _fleet(request).model_ready else "UNAVAILABLE"
    return web.json_response(
        [{"name": serving.MODEL_NAME, "version": serving.MODEL_VERSION, "state": state}]
    )


async def repository_load(request: web.Request) -> web.Response:
    bad = _model(request)
    if bad is not None:
        return bad
    fleet = _fleet(request)
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else {}
        params = body.get("parameters") or {} if isinstance(body, dict) else None
        if params is None:
            raise ValueError("request body must be a JSON object")
        cfg = params.get("config")
        config = json.loads(cfg) if isinstance(cfg, str) else cfg
        if config is not None and not isinstance(config, dict):
            raise ValueError("parameters.config must be a JSON object string")
        await fleet.load(config, request.headers.get(POD_HEADER))
    except (ValueError, InferError) as exc:
        return _error(400, f"load failed for '{serving.MODEL_NAME}': {exc}")
    fleet.model_ready = True
    return web.Response(status=200)


async def repository_unload(request: web.Request) -> web.Response:
    bad = _model(request)
    if bad is not None:
        return bad
    _fleet(request).model_ready = False
    return web.Response(status=200)


def inference_app(fleet: Fleet) -> web.Application:
    """The Triton HTTP endpoint (default port 8000)."""
    app = web.Application(client_max_size=64 * 2**20)
    app[FLEET] = fleet
    m = "/v2/models/{model}"
    mv = "/v2/models/{model}/versions/{version}"
    app.add_routes(
        [
            web.get("/v2/health/live", live),
            web.get("/v2/health/ready", ready),
            web.get("/v2", server_metadata),
            web.get(m, model_metadata),
            web.get(mv, model_metadata),
            web.get(m + "/ready", model_ready),
            web.get(mv + "/ready", model_ready),
            web.get(m + "/config", model_config),
            web.get(m + "/stats", model_stats),
            web.post(m + "/infer", infer),
            web.post(mv + "/infer", infer),
            web.post("/v2/repository/index", repository_index),
            web.post("/v2/repository/models/{model}/load", repository_load),
            web.post("/v2/repository/models/{model}/unload", repository_unload),
        ]
    )
    return app


async def pod_metrics(request: web.Request) -> web.Response:
    pod = _fleet(request).pods.get(request.match_info["pod"])
    if pod is None or pod.namespace != request.match_info["namespace"]:
        return web.Response(status=404, text="no such ready pod\n")
    return web.Response(text=exposition.triton_pod(pod), content_type="text/plain")


async def gpu_metrics(request: web.Request) -> web.Response:
    node = request.match_info["node"]
    fleet = _fleet(request)
    if node not in fleet.nodes:
        return web.Response(status=404, text="no such GPU node\n")
    return web.Response(text=exposition.dcgm_node(fleet, node), content_type="text/plain")


async def self_metrics(request: web.Request) -> web.Response:
    telemetry.PODS.set(len(_fleet(request).pods))
    return web.Response(body=generate_latest(telemetry.REGISTRY), content_type="text/plain")


def metrics_app(fleet: Fleet) -> web.Application:
    """Per-pod Triton metrics, per-node DCGM metrics and the emulator's own (port 8002)."""
    app = web.Application()
    app[FLEET] = fleet
    app.add_routes(
        [
            web.get("/metrics/pods/{namespace}/{pod}", pod_metrics),
            web.get("/metrics/gpus/{node}", gpu_metrics),
            web.get("/metrics", self_metrics),
        ]
    )
    return app
