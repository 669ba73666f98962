"""KServe v2 / Triton gRPC front-end (port 8001): ``inference.GRPCInferenceService``.

Implements the service from the generated code ``tritonclient`` ships
(``tritonclient.grpc.service_pb2_grpc``), so the emulator and every Triton gRPC client agree
on the protocol by construction. Status codes follow Triton: INVALID_ARGUMENT for a request
that does not match the model, UNAVAILABLE when overloaded or no pod is ready, NOT_FOUND for
an unknown model; shared-memory and trace RPCs answer UNIMPLEMENTED (not emulated).
"""

from __future__ import annotations

import json
import logging

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from ecrl import serving
from ecrl.emulator import inference, telemetry, tensors
from ecrl.emulator.fleet import POD_HEADER, Fleet
from ecrl.emulator.pod import InferError

log = logging.getLogger("ecrl.emulator.grpc")


def _pod(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == POD_HEADER:
            return value
    return None


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The Triton gRPC inference service over the emulated fleet."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def _check_model(self, name: str, version: str, context) -> None:
        try:
            inference.check_model(name, version)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.fleet.ready())

    async def ModelReady(self, request, context):
        await self._check_model(request.name, request.version, context)
        return service_pb2.ModelReadyResponse(ready=self.fleet.ready())

    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(
            name=inference.SERVER_NAME,
            version=inference.SERVER_VERSION,
            extensions=inference.EXTENSIONS,
        )

    async def ModelMetadata(self, request, context):
        await self._check_model(request.name, request.version, context)
        return json_format.ParseDict(
            inference.model_metadata(), service_pb2.ModelMetadataResponse()
        )

    async def ModelConfig(self, request, context):
        await self._check_model(request.name, request.version, context)
        cfg = json_format.ParseDict(
            inference.model_config(self.fleet, _pod(context)), model_config_pb2.ModelConfig()
        )
        return service_pb2.ModelConfigResponse(config=cfg)

    async def ModelStatistics(self, request, context):
        if request.name:
            await self._check_model(request.name, request.version, context)
        return json_format.ParseDict(
            inference.statistics(self.fleet), service_pb2.ModelStatisticsResponse()
        )

    async def ModelInfer(self, request, context):
        await self._check_model(request.model_name, request.model_version, context)
        try:
            x = self._decode(request)
        except tensors.TensorError as exc:
            telemetry.REQUESTS.labels("grpc", "invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            ans = await inference.infer(self.fleet, x, _pod(context), "grpc")
        except InferError as exc:
            code = (
                grpc.StatusCode.UNAVAILABLE if exc.unavailable else grpc.StatusCode.INVALID_ARGUMENT
            )
            await context.abort(code, str(exc))
        resp = service_pb2.ModelInferResponse(
            model_name=serving.MODEL_NAME, model_version=serving.MODEL_VERSION, id=request.id
        )
        out = resp.outputs.add()
        out.name = serving.OUTPUT_NAME
        out.datatype = serving.DATATYPE
        out.shape.extend(ans.output.shape)
        resp.raw_output_contents.append(ans.output.tobytes())
        resp.parameters["emulated"].bool_param = True
        resp.parameters["pod"].string_param = ans.pod
        return resp

    def _decode(self, request: service_pb2.ModelInferRequest):
        if len(request.inputs) != 1:
            raise tensors.TensorError(
                f"expected 1 input for model '{serving.MODEL_NAME}', got {len(request.inputs)}"
            )
        inp = request.inputs[0]
        batch = tensors.check_input(
            inp.name, inp.datatype, list(inp.shape), self.fleet.config.max_batch_size
        )
        for o in request.outputs:
            if o.name != serving.OUTPUT_NAME:
                raise tensors.TensorError(
                    f"unexpected inference output '{o.name}' for model '{serving.MODEL_NAME}'"
                )
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise tensors.TensorError("raw_input_contents must hold exactly one tensor")
            return tensors.decode(request.raw_input_contents[0], batch)
        if inp.contents.fp32_contents:
            return tensors.from_json_data(list(inp.contents.fp32_contents), batch)
        raise tensors.TensorError(f"input '{serving.INPUT_NAME}' has no data")

    async def RepositoryIndex(self, request, context):
        state = "READY" if self.fleet.model_ready else "UNAVAILABLE"
        resp = service_pb2.RepositoryIndexResponse()
        resp.models.add(name=serving.MODEL_NAME, version=serving.MODEL_VERSION, state=state)
        return resp

    async def RepositoryModelLoad(self, request, context):
        await self._check_model(request.model_name, "", context)
        try:
            config = None
            if "config" in request.parameters:
                config = json.loads(request.parameters["config"].string_param)
                if not isinstance(config, dict):
                    raise ValueError("parameters.config must be a JSON object string")
            await self.fleet.load(config, _pod(context))
        except (ValueError, InferError) as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"load failed for '{serving.MODEL_NAME}': {exc}"
            )
        self.fleet.model_ready = True
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        await self._check_model(request.model_name, "", context)
        self.fleet.model_ready = False
        return service_pb2.RepositoryModelUnloadResponse()


def server(fleet: Fleet, address: str) -> grpc.aio.Server:
    """A gRPC server bound to ``address`` (e.g. 127.0.0.1:8001), not started."""
    srv = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 2**20),
            ("grpc.max_send_message_length", 64 * 2**20),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(fleet), srv)
    srv.add_insecure_port(address)
    return srv
