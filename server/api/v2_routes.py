"""Open Inference Protocol v2 over HTTP (what Triton and KServe clients speak).

Health, server and model metadata, readiness, and inference with JSON or binary tensors:
UINT8 or FP32 preprocessed images (pixel values 0-255, the model's input before
normalisation), or BYTES holding encoded JPEG/PNG that the server decodes. Errors are
``{"error": "..."}``, as the protocol says.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from model_contract.errors import ServiceError
from model_contract.manifest import ModelManifest
from server.api.deps import service_of
from server.api.disconnect import unless_disconnected
from server.api.openapi_bodies import V2_INFER
from server.api.responses import OrjsonResponse
from server.triton_config import EXTENSIONS, model_config, platform_of
from server.v2_codec import (
    InferRequest,
    TensorLimits,
    check_outputs,
    encode_infer_response,
    model_images,
    parse_header_length,
    parse_infer_request,
    v2_datatype,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])


@router.get("/health/live")
async def live() -> Response:
    return OrjsonResponse({"live": True})


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    is_ready = service_of(request).readiness().ready
    return OrjsonResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("")
async def server_metadata(request: Request) -> Response:
    return OrjsonResponse({"name": "imgserve", "version": request.app.version, "extensions": EXTENSIONS})


async def _metadata(request: Request, name: str, version: str | None) -> Response:
    model = service_of(request).model(name, version)
    m = model.manifest
    return OrjsonResponse(
        {
            "name": model.name,
            "versions": [str(model.version)],
            "platform": platform_of(model.runtime),
            "inputs": [{"name": m.input.name, "datatype": v2_datatype(m.input.dtype), "shape": m.input.shape}],
            "outputs": [{"name": m.output.name, "datatype": v2_datatype(m.output.dtype), "shape": m.output.shape}],
        }
    )


@router.get("/models/stats")
async def all_statistics(request: Request) -> Response:
    """Triton's statistics extension, for every served version. (Registered before
    ``/models/{name}``, which would take "stats" for a model's name.)"""
    return await _statistics(request, None, None)


@router.get("/models/{name}/stats")
async def model_statistics(request: Request, name: str) -> Response:
    return await _statistics(request, name, None)


@router.get("/models/{name}/versions/{version}/stats")
async def model_version_statistics(request: Request, name: str, version: str) -> Response:
    return await _statistics(request, name, version)


async def _statistics(request: Request, name: str | None, version: str | None) -> Response:
    stats = await service_of(request).statistics(name, version)
    return OrjsonResponse({"model_stats": [s.as_triton() for s in stats]})


@router.get("/models/{name}/config")
async def model_configuration(request: Request, name: str) -> Response:
    return _config(request, name, None)


@router.get("/models/{name}/versions/{version}/config")
async def model_version_configuration(request: Request, name: str, version: str) -> Response:
    return _config(request, name, version)


def _config(request: Request, name: str, version: str | None) -> Response:
    """Triton's model configuration extension (``server/triton_config.py``)."""
    service = service_of(request)
    return OrjsonResponse(model_config(service.model(name, version), service.limits.request_timeout_s))


@router.get("/models/{name}")
async def model_metadata(request: Request, name: str) -> Response:
    return await _metadata(request, name, None)


@router.get("/models/{name}/versions/{version}")
async def model_version_metadata(request: Request, name: str, version: str) -> Response:
    return await _metadata(request, name, version)


async def _ready(request: Request, name: str, version: str | None) -> Response:
    try:
        service_of(request).model(name, version)
    except ServiceError as exc:
        return OrjsonResponse({"name": name, "ready": False, "error": exc.message}, status_code=400)
    return OrjsonResponse({"name": name, "ready": True})


@router.get("/models/{name}/ready")
async def model_ready(request: Request, name: str) -> Response:
    return await _ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready")
async def model_version_ready(request: Request, name: str, version: str) -> Response:
    return await _ready(request, name, version)


def _parse(
    body: bytes, header_length: int | None, limits: TensorLimits, manifest: ModelManifest
) -> tuple[InferRequest, np.ndarray | list[bytes]]:
    """Everything about the request that can be checked before the model runs; off the loop."""
    infer_request = parse_infer_request(body, header_length, limits)
    check_outputs(infer_request.outputs, manifest.output.name)
    return infer_request, model_images(infer_request, manifest.input.name, manifest.item_shape)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    service = service_of(request)
    model = service.model(name, version)
    body = await request.body()
    header_length = parse_header_length(request.headers.get("inference-header-content-length"), len(body))
    limits = TensorLimits.for_images(model.max_images, model.manifest.item_shape)
    parse = partial(_parse, body, header_length, limits, model.manifest)
    json_part = body if header_length is None else body[:header_length]  # binary data parses fast
    infer_request, images = await service.offload(parse, json=json_part, body_bytes=len(body))
    timeout_us = infer_request.timeout_us
    top_k = max((out.classification for out in infer_request.outputs), default=0)
    work = service.infer(
        model_name=model.name,
        version=None if version is None else model.version,
        tensors=list(images) if isinstance(images, np.ndarray) else None,
        encoded=images if isinstance(images, list) else None,
        timeout_s=None if timeout_us is None else timeout_us / 1e6,
        top_k=top_k or None,
    )
    inference = await unless_disconnected(request, work)
    served = inference.model
    body, json_length = encode_infer_response(
        served.name,
        served.version,
        infer_request.id,
        served.manifest.output.name,
        inference.outputs,
        infer_request.outputs,
        inference.classes,
        served.manifest.output.dtype,
    )
    if json_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(json_length)}
    )


@router.post("/models/{name}/infer", openapi_extra=V2_INFER)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", openapi_extra=V2_INFER)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)


@router.post("/repository/index")
async def repository_index(request: Request) -> Response:
    """Every served version with its state, and the models whose last load failed."""
    index = service_of(request).repository_index()
    entries: list[dict[str, Any]] = [
        {"name": m.name, "version": str(m.version), "state": "READY" if m.ready else "LOADING", "reason": ""}
        for m in index.served
    ]
    served = {m.name for m in index.served}
    entries += [
        {"name": name, "version": "", "state": "READY" if name in served else "UNAVAILABLE", "reason": error}
        for name, error in index.errors.items()
    ]
    return OrjsonResponse(entries)


@router.post("/repository/models/{name}/load")
async def repository_load(request: Request, name: str) -> Response:
    """Rescan this model's folder now: load new versions, retire removed ones."""
    error = await service_of(request).load(name)
    if error is not None:
        return OrjsonResponse({"error": error}, status_code=400)
    return OrjsonResponse({})


@router.post("/repository/models/{name}/unload")
async def repository_unload(request: Request, name: str) -> Response:
    await service_of(request).unload(name)
    return OrjsonResponse({})
