"""TensorFlow Serving's REST request format, parsed and validated: bytes in, images out.

``:predict`` takes the row form (``instances``) or the columnar form (``inputs``); ``:classify``
takes ``examples``. An image is ``{"b64": "<encoded JPEG/PNG>"}`` (decoded by the server), or
a [height][width][3] list of pixel values 0-255; a row may also name the model's input,
``{"<input>": <image>}``. Every field is checked, and the image count against the limit,
before anything is decoded or converted. Pure and CPU-bound: call it off the event loop.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from model_contract.errors import ErrorKind, ServiceError, echo
from model_contract.imaging import to_uint8_pixels

ROW_KEYS = ("instances", "inputs", "examples")
KNOWN_KEYS = frozenset({*ROW_KEYS, "signature_name", "context", "top_k"})
DEFAULT_TOP_K = 5


def _bad(message: str) -> ServiceError:
    return ServiceError(ErrorKind.BAD_REQUEST, message)


@dataclass(frozen=True)
class ModelInput:
    """What the codec must know of the model."""

    name: str
    item_shape: tuple[int, ...]
    signature: str


@dataclass(frozen=True)
class TFServingRequest:
    images: np.ndarray | list[bytes]
    """uint8 [n, *item_shape] pixels, or encoded images to decode."""
    columnar: bool
    """Answer in the columnar form (``outputs``) rather than the row form (``predictions``)."""
    top_k: int | None
    """As given (None: not given); its range is the service's one top-k check."""


def _rows(body: dict[str, Any], model: ModelInput) -> tuple[list[Any], bool]:
    present = [key for key in ROW_KEYS if key in body]
    if len(present) != 1:
        raise _bad("the request needs exactly one of 'instances' (row form), 'inputs' (columnar) or 'examples'")
    key = present[0]
    rows = body[key]
    if key == "inputs" and isinstance(rows, dict):
        if set(rows) != {model.name}:
            raise _bad(f"'inputs' must name this model's one input, {model.name!r}")
        rows = rows[model.name]
    if not isinstance(rows, list) or not rows:
        raise _bad(f"'{key}' must be a non-empty list")
    return rows, key == "inputs"


def _encoded(value: dict[str, Any]) -> bytes:
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise _bad('an encoded image is {"b64": "<base64>"}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad("b64 is not valid base64") from exc


def _pixels(value: list[Any], item_shape: tuple[int, ...]) -> np.ndarray:
    if len(value) != item_shape[0]:  # cheap check before converting a long list
        raise _bad(f"a pixel image must be a {'x'.join(map(str, item_shape))} nested list")
    try:
        pixels = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _bad("a pixel image must be a regularly nested list of numbers") from exc
    if pixels.shape != item_shape:
        raise _bad(f"a pixel image must be {'x'.join(map(str, item_shape))}; got {'x'.join(map(str, pixels.shape))}")
    if not (np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 255):
        raise _bad("pixel values must be from 0 to 255")
    return to_uint8_pixels(pixels)


def _image(row: Any, model: ModelInput) -> bytes | np.ndarray:
    if isinstance(row, dict) and model.name in row:
        if len(row) != 1:
            raise _bad(f"a row must hold only this model's one input, {model.name!r}")
        row = row[model.name]
    if isinstance(row, dict):
        return _encoded(row)
    if isinstance(row, list):
        return _pixels(row, model.item_shape)
    raise _bad('an image is {"b64": "<base64>"} or a [height][width][3] list of pixel values')


def _top_k(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ServiceError(ErrorKind.INVALID_PARAMETER, "top_k must be an integer")
    return value


def parse_request(body: bytes, model: ModelInput, *, max_images: int) -> TFServingRequest:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad("the body is not valid JSON") from exc
    if not isinstance(request, dict):
        raise _bad("the body must be a JSON object")
    unknown = sorted(set(request) - KNOWN_KEYS)
    if unknown:
        raise _bad(f"unknown field {echo(unknown[0])}; known: {', '.join(sorted(KNOWN_KEYS))}")
    signature = request.get("signature_name", model.signature)
    if signature != model.signature:
        raise _bad(f"unknown signature_name {echo(signature)}; this model has {model.signature!r}")
    top_k = _top_k(request.get("top_k"))
    rows, columnar = _rows(request, model)
    if len(rows) > max_images:
        raise ServiceError(ErrorKind.TOO_MANY_IMAGES, f"{len(rows)} images in one request; at most {max_images}")
    images = [_image(row, model) for row in rows]
    encoded = [i for i in images if isinstance(i, bytes)]
    pixels = [i for i in images if isinstance(i, np.ndarray)]
    if encoded and pixels:
        raise _bad("send either b64 images or pixel lists in one request, not both")
    return TFServingRequest(encoded or np.stack(pixels), columnar, top_k)
