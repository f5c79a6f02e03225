"""TensorFlow Serving's REST API, so its existing clients can point at imgserve.

``:predict`` takes the row form (``instances``) or the columnar form (``inputs``). An image
is ``{"b64": "<encoded JPEG/PNG>"}`` (decoded by the server) or a [height][width][3] list of
pixel values 0-255. ``:classify`` takes ``examples`` and answers ``[label, score]`` pairs, the
best ``top_k`` (default 5). Also version status and metadata. Errors are
``{"error": "..."}``, as TF Serving's are.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from model_contract.errors import ErrorKind, ServiceError, echo
from server.api.deps import service_of
from server.api.disconnect import unless_disconnected
from server.api.openapi_bodies import TF_SERVING
from server.api.responses import OrjsonResponse
from server.service import Inference, ModelDescription
from server.tfserving_codec import DEFAULT_TOP_K, ModelInput, TFServingRequest, parse_request

router = APIRouter(prefix="/v1/models", tags=["tensorflow serving rest"])

# Every ``TensorDtype`` a manifest may hold, as TF Serving names it.
TF_DTYPES = {
    "bool": "DT_BOOL", "uint8": "DT_UINT8", "uint16": "DT_UINT16", "uint32": "DT_UINT32", "uint64": "DT_UINT64",
    "int8": "DT_INT8", "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64",
    "float16": "DT_HALF", "float32": "DT_FLOAT", "float64": "DT_DOUBLE",
}  # fmt: skip


def _model(request: Request, name: str, version: str | None, label: str | None = None) -> ModelDescription:
    model = service_of(request).model(name, version)
    if label is not None and label != "latest":
        raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"model {echo(name)} has no version labelled {echo(label)}")
    return model


async def _run(
    request: Request, model: ModelDescription, pinned: bool, classify: bool
) -> tuple[Inference, TFServingRequest]:
    service = service_of(request)
    body = await request.body()
    spec = ModelInput(model.manifest.input.name, model.manifest.item_shape, model.manifest.signature)
    parsed = await service.offload(partial(parse_request, body, spec, max_images=model.max_images), json=body)
    # Only :classify ranks classes; :predict answers the whole output whatever top_k it names
    # (the codec still refuses a top_k that is not an integer, on either).
    top_k = None
    if classify:
        top_k = min(DEFAULT_TOP_K, service.limits.max_top_k) if parsed.top_k is None else parsed.top_k
    images = parsed.images
    work = service.infer(
        model_name=model.name,
        version=model.version if pinned else None,
        tensors=list(images) if isinstance(images, np.ndarray) else None,
        encoded=images if isinstance(images, list) else None,
        top_k=top_k,
    )
    return await unless_disconnected(request, work), parsed


async def _predict(request: Request, name: str, version: str | None, label: str | None) -> Response:
    model = _model(request, name, version, label)
    inference, parsed = await _run(request, model, pinned=version is not None, classify=False)
    return OrjsonResponse({"outputs" if parsed.columnar else "predictions": inference.outputs})


async def _classify(request: Request, name: str, version: str | None, label: str | None) -> Response:
    model = _model(request, name, version, label)
    inference, _ = await _run(request, model, pinned=version is not None, classify=True)
    return OrjsonResponse({"results": [[[p.label, p.score] for p in row] for row in inference.classes]})


def _status(model: ModelDescription) -> Response:
    state = "AVAILABLE" if model.ready else "LOADING"
    status = {"error_code": "OK", "error_message": ""}
    return OrjsonResponse({"model_version_status": [{"version": str(model.version), "state": state, "status": status}]})


def _tensor_info(name: str, dtype: str, shape: list[int]) -> dict[str, Any]:
    return {
        "dtype": TF_DTYPES[dtype],
        "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in shape], "unknown_rank": False},
        "name": name,
    }


def _metadata(model: ModelDescription) -> Response:
    m = model.manifest
    signature = {
        "inputs": {m.input.name: _tensor_info(m.input.name, m.input.dtype, m.input.shape)},
        "outputs": {m.output.name: _tensor_info(m.output.name, m.output.dtype, m.output.shape)},
        "method_name": "tensorflow/serving/predict",
    }
    return OrjsonResponse(
        {
            "model_spec": {"name": m.name, "signature_name": "", "version": str(m.version)},
            "metadata": {"signature_def": {"signature_def": {m.signature: signature}}},
        }
    )


@router.post("/{name}:predict", openapi_extra=TF_SERVING)
async def predict(request: Request, name: str) -> Response:
    return await _predict(request, name, None, None)


@router.post("/{name}/versions/{version}:predict", openapi_extra=TF_SERVING)
async def predict_version(request: Request, name: str, version: str) -> Response:
    return await _predict(request, name, version, None)


@router.post("/{name}/labels/{label}:predict", openapi_extra=TF_SERVING)
async def predict_label(request: Request, name: str, label: str) -> Response:
    return await _predict(request, name, None, label)


@router.post("/{name}:classify", openapi_extra=TF_SERVING)
async def classify(request: Request, name: str) -> Response:
    return await _classify(request, name, None, None)


@router.post("/{name}/versions/{version}:classify", openapi_extra=TF_SERVING)
async def classify_version(request: Request, name: str, version: str) -> Response:
    return await _classify(request, name, version, None)


@router.get("/{name}")
async def status(request: Request, name: str) -> Response:
    return _status(_model(request, name, None))


@router.get("/{name}/versions/{version}")
async def version_status(request: Request, name: str, version: str) -> Response:
    return _status(_model(request, name, version))


@router.get("/{name}/metadata")
async def metadata(request: Request, name: str) -> Response:
    return _metadata(_model(request, name, None))


@router.get("/{name}/versions/{version}/metadata")
async def version_metadata(request: Request, name: str, version: str) -> Response:
    return _metadata(_model(request, name, version))
