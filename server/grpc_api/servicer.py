"""``inference.GRPCInferenceService``: thin handlers over the same ``ClassificationService`` as the
HTTP routes (``server/api/v2_routes.py``): parse, call the service, serialize.

``ModelInfer`` is admitted before its message is read: it is served as a client-streaming
method (a unary call looks the same on the wire), so the request slot is taken, or refused,
before gRPC reads the message, and the message must arrive within the body timeout. Its bytes
are then counted against the in-flight body budget, as an HTTP body is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import numpy as np
from google.protobuf import json_format

from model_contract.errors import ErrorKind, ServiceError
from server.admission import Admission
from server.grpc_api import inference_pb2 as pb
from server.grpc_api.calls import read_one
from server.grpc_api.codec import check_for_model, decode_request, encode_infer_response, parse_for_model
from server.grpc_api.guard import Context, parsed
from server.grpc_api.wire import peek_request
from server.service import ISOLATE_FROM_BYTES, ClassificationService
from server.triton_config import EXTENSIONS, model_config, platform_of
from server.v2_codec import TensorLimits, v2_datatype


def _version(text: str) -> str | None:
    """A request's version field: empty means the server's choice (the newest)."""
    return text or None


class InferenceServicer:
    def __init__(
        self, service: ClassificationService, admission: Admission, *, body_timeout_s: float, server_version: str
    ) -> None:
        self._service = service
        self._admission = admission
        self._body_timeout_s = body_timeout_s
        self._server_version = server_version

    # Health and metadata.

    async def server_live(self, request: bytes, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: bytes, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.readiness().ready)

    async def model_ready(self, request: bytes, context: Context) -> pb.ModelReadyResponse:
        message = parsed(pb.ModelReadyRequest, request)
        try:
            self._service.model(message.name, _version(message.version))
        except ServiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, request: bytes, context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="imgserve", version=self._server_version, extensions=EXTENSIONS)

    async def model_metadata(self, request: bytes, context: Context) -> pb.ModelMetadataResponse:
        message = parsed(pb.ModelMetadataRequest, request)
        model = self._service.model(message.name, _version(message.version))
        m = model.manifest
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(model.version)],
            platform=platform_of(model.runtime),
            inputs=[tensor(name=m.input.name, datatype=v2_datatype(m.input.dtype), shape=m.input.shape)],
            outputs=[tensor(name=m.output.name, datatype=v2_datatype(m.output.dtype), shape=m.output.shape)],
        )

    async def model_config(self, request: bytes, context: Context) -> pb.ModelConfigResponse:
        message = parsed(pb.ModelConfigRequest, request)
        model = self._service.model(message.name, _version(message.version))
        config = model_config(model, self._service.limits.request_timeout_s)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

    async def model_statistics(self, request: bytes, context: Context) -> pb.ModelStatisticsResponse:
        message = parsed(pb.ModelStatisticsRequest, request)
        if message.version and not message.name:
            raise ServiceError(ErrorKind.BAD_REQUEST, "a version needs a model name")
        stats = await self._service.statistics(message.name or None, _version(message.version))
        response = pb.ModelStatisticsResponse()
        json_format.ParseDict({"model_stats": [s.as_triton() for s in stats]}, response)
        return response

    # The model repository (admin token).

    async def repository_index(self, request: bytes, context: Context) -> pb.RepositoryIndexResponse:
        message = parsed(pb.RepositoryIndexRequest, request)
        index = self._service.repository_index()
        entry = pb.RepositoryIndexResponse.ModelIndex
        models = [
            entry(name=m.name, version=str(m.version), state="READY" if m.ready else "LOADING")
            for m in index.served
            if m.ready or not message.ready
        ]
        if not message.ready:
            served = {m.name for m in index.served}
            models += [
                entry(name=name, state="READY" if name in served else "UNAVAILABLE", reason=error)
                for name, error in index.errors.items()
            ]
        return pb.RepositoryIndexResponse(models=models)

    async def repository_model_load(self, request: bytes, context: Context) -> pb.RepositoryModelLoadResponse:
        message = parsed(pb.RepositoryModelLoadRequest, request)
        error = await self._service.load(message.model_name)
        if error is not None:
            raise ServiceError(ErrorKind.BAD_REQUEST, error)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request: bytes, context: Context) -> pb.RepositoryModelUnloadResponse:
        message = parsed(pb.RepositoryModelUnloadRequest, request)
        await self._service.unload(message.model_name)
        return pb.RepositoryModelUnloadResponse()

    # Inference.

    async def model_infer(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        with self._admission.requests.held(1):
            message = await read_one(requests, context, self._body_timeout_s, "ModelInferRequest")
            with self._admission.body_bytes.held(len(message)):
                return await self._infer(message, context)

    async def _infer(self, message: bytes, context: Context) -> bytes:
        service, size = self._service, len(message)
        peek = peek_request(message)  # the model, and how much is raw bytes: nothing parsed yet
        if not peek.model_name:
            raise ServiceError(ErrorKind.BAD_REQUEST, "model_name is required")
        model = service.model(peek.model_name, _version(peek.model_version))
        limits = TensorLimits.for_images(model.max_images, model.manifest.item_shape)
        if peek.parses_fast(size):
            # Raw contents parse as fast as they copy: here. Converting and checking them is
            # CPU work for a thread once they are large (FP32 pixels are converted to uint8).
            checked = partial(check_for_model, decode_request(message), limits, model.manifest)
            parsed, images, raw = await service.offload(checked, body_bytes=size, isolate=False)
        else:
            # Typed numbers parse and convert slowly, holding the GIL: off the loop, and from a
            # megabyte on in a worker process, as large JSON is.
            whole = partial(parse_for_model, message, limits, model.manifest)
            parsed, images, raw = await service.offload(whole, body_bytes=size, isolate=size >= ISOLATE_FROM_BYTES)
        inference = await service.infer(
            model_name=model.name,
            version=None if not peek.model_version else model.version,
            tensors=list(images) if isinstance(images, np.ndarray) else None,
            encoded=images if isinstance(images, list) else None,
            timeout_s=call_timeout_s(parsed.timeout_us, context),
            top_k=max((out.classification for out in parsed.outputs), default=0) or None,
        )
        served = inference.model
        return encode_infer_response(
            served.name,
            served.version,
            parsed.id,
            served.manifest.output.name,
            inference.outputs,
            parsed.outputs,
            inference.classes,
            served.manifest.output.dtype,
            raw,
        )


def call_timeout_s(timeout_us: float | None, context: Context) -> float | None:
    """The sooner of the request's ``timeout`` parameter and the call's gRPC deadline: a client
    may shorten the server's deadline either way, never lengthen it (the service caps both)."""
    remaining = context.time_remaining()
    candidates = [t for t in (None if timeout_us is None else timeout_us / 1e6, remaining) if t is not None]
    if not candidates:
        return None
    budget = min(candidates)
    if budget <= 0:
        raise ServiceError(ErrorKind.TIMEOUT, "the call's deadline passed before the model could run it")
    return budget
