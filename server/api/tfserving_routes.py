"""TensorFlow Serving's REST API, so its existing clients can point at imgserve.

``:predict`` takes the row form (``instances``) or the columnar form (``inputs``). An image
is ``{"b64": "<encoded JPEG/PNG>"}`` (decoded by the server) or a [height][width][3] list of
pixel values 0-255. ``:classify`` takes ``examples`` and answers ``[label, score]`` pairs, the
best ``top_k`` (default 5). Also version status and metadata. Errors are
``{"error": "..."}``, as TF Serving's are.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from server.api.disconnect import unless_disconnected
from server.api.responses import OrjsonResponse
from server.errors import ErrorKind, ServiceError
from server.imaging import to_uint8_pixels
from server.model_instance import ModelInstance
from server.registry import ModelRegistry
from server.service import ClassificationService

router = APIRouter(prefix="/v1/models", tags=["tensorflow serving rest"])

TF_DTYPES = {"uint8": "DT_UINT8", "float32": "DT_FLOAT"}


def _bad(message: str) -> ServiceError:
    return ServiceError(ErrorKind.BAD_REQUEST, message)


def _model(request: Request, name: str, version: str | None, label: str | None = None) -> ModelInstance:
    registry: ModelRegistry = request.app.state.registry
    model = registry.get_text_version(name, version)
    if label is not None and label != "latest":
        raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"model {name!r} has no version labelled {label!r}")
    return model


def _image(value: Any, input_name: str) -> bytes | np.ndarray:
    """One instance: {"b64": ...}, {input_name: {"b64": ...}}, or a nested pixel list."""
    if isinstance(value, dict) and input_name in value:
        value = value[input_name]
    if isinstance(value, dict):
        if "b64" not in value:
            raise _bad('an image instance is {"b64": "..."} or a [height][width][3] list of pixels')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError) as exc:
            raise _bad("b64 is not valid base64") from exc
    try:
        pixels = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise _bad("a pixel instance must be a [height][width][3] list of numbers") from exc
    return to_uint8_pixels(pixels)


def _instances(body: dict[str, Any], input_name: str) -> tuple[list[bytes | np.ndarray], bool]:
    """The images, and whether the request was columnar (which shapes the answer)."""
    if "instances" in body:
        rows, columnar = body["instances"], False
    elif "inputs" in body:
        rows, columnar = body["inputs"], True
        if isinstance(rows, dict):
            rows = rows.get(input_name, next(iter(rows.values()), []))
    elif "examples" in body:
        rows, columnar = body["examples"], False
    else:
        raise _bad("the request needs 'instances' (row form) or 'inputs' (columnar form)")
    if not isinstance(rows, list) or not rows:
        raise _bad("no instances")
    return [_image(row, input_name) for row in rows], columnar


async def _run(request: Request, model: ModelInstance, pinned: bool) -> tuple[np.ndarray, bool, dict[str, Any]]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    images, columnar = _instances(body, model.manifest.input.name)
    service: ClassificationService = request.app.state.service
    encoded = [i for i in images if isinstance(i, bytes)]
    if encoded and len(encoded) != len(images):
        raise _bad("send either b64 images or pixel tensors in one request, not both")
    version = model.version if pinned else None
    if encoded:
        work = service.infer(model_name=model.name, version=version, encoded=encoded)
    else:
        tensors = [i for i in images if isinstance(i, np.ndarray)]
        work = service.infer(model_name=model.name, version=version, tensors=tensors)
    _, probabilities = await unless_disconnected(request, work)
    return probabilities, columnar, body


async def _predict(request: Request, name: str, version: str | None, label: str | None) -> Response:
    model = _model(request, name, version, label)
    probabilities, columnar, _ = await _run(request, model, pinned=version is not None)
    key = "outputs" if columnar else "predictions"
    return OrjsonResponse({key: probabilities})


async def _classify(request: Request, name: str, version: str | None, label: str | None) -> Response:
    model = _model(request, name, version, label)
    probabilities, _, body = await _run(request, model, pinned=version is not None)
    k = int(body.get("top_k", 5))
    labels = model.manifest.labels
    results = [[[labels[i], float(row[i])] for i in np.argsort(-row, kind="stable")[:k]] for row in probabilities]
    return OrjsonResponse({"results": results})


def _status(model: ModelInstance) -> Response:
    state = "AVAILABLE" if model.ready else "LOADING"
    status = {"error_code": "OK", "error_message": ""}
    return OrjsonResponse({"model_version_status": [{"version": str(model.version), "state": state, "status": status}]})


def _tensor_info(name: str, dtype: str, shape: list[int]) -> dict[str, Any]:
    return {
        "dtype": TF_DTYPES.get(dtype, dtype),
        "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in shape], "unknown_rank": False},
        "name": name,
    }


def _metadata(model: ModelInstance) -> Response:
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


@router.post("/{name}:predict")
async def predict(request: Request, name: str) -> Response:
    return await _predict(request, name, None, None)


@router.post("/{name}/versions/{version}:predict")
async def predict_version(request: Request, name: str, version: str) -> Response:
    return await _predict(request, name, version, None)


@router.post("/{name}/labels/{label}:predict")
async def predict_label(request: Request, name: str, label: str) -> Response:
    return await _predict(request, name, None, label)


@router.post("/{name}:classify")
async def classify(request: Request, name: str) -> Response:
    return await _classify(request, name, None, None)


@router.post("/{name}/versions/{version}:classify")
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
