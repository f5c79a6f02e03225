"""Open Inference Protocol v2 (KServe v2, as Triton speaks it): request and response codec.

Covers JSON tensors, the binary tensor data extension (``Inference-Header-Content-Length``,
``binary_data_size``, ``binary_data`` / ``binary_data_output``) and the classification
extension (``"classification": k`` on an output gives BYTES ``"score:index:label"``). It is
pure: bytes in, arrays out, and the reverse; the routes own HTTP.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from model_contract.errors import ErrorKind, ServiceError, echo
from model_contract.imaging import to_uint8_pixels
from server.top_k import Prediction

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "UINT16": np.dtype("<u2"),
    "INT16": np.dtype("<i2"),
    "UINT32": np.dtype("<u4"),
    "INT32": np.dtype("<i4"),
    "UINT64": np.dtype("<u8"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
V2_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def v2_datatype(dtype: str) -> str:
    """A manifest's numpy dtype name ("float32") as the protocol names it ("FP32"). Every name
    a manifest may hold has one (``model_contract.manifest.TensorDtype``)."""
    return V2_NAMES[np.dtype(dtype)]


# Structural bounds: a well-formed request is far inside them, a hostile one cannot make the
# parser do work that grows faster than its body.
MAX_TENSORS = 16
MAX_DIMS = 8
MAX_DIM = 2**31 - 1
MAX_NAME_CHARS = 256


class ProtocolError(ServiceError):
    """The request does not follow the protocol; the message says how (400 unless told)."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.BAD_REQUEST) -> None:
        super().__init__(kind, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.kind))


@dataclass(frozen=True)
class TensorLimits:
    """What one request may declare, checked before anything is converted or split."""

    max_batch: int
    """Images (the first dimension) in one input tensor."""
    max_elements: int
    """Numeric elements in one input tensor."""
    max_byte_elements: int
    """BYTES elements (encoded images) in one input tensor."""

    @classmethod
    def for_images(cls, max_images: int, item_shape: tuple[int, ...]) -> TensorLimits:
        """A model that takes at most ``max_images`` images of ``item_shape`` in one request."""
        return cls(max_batch=max_images, max_elements=max_images * math.prod(item_shape), max_byte_elements=max_images)


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None  # numeric tensors
    elements: list[bytes] = field(default_factory=list)  # BYTES tensors


@dataclass
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0


@dataclass
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput]
    parameters: dict[str, Any]
    timeout_us: float | None = None


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _list(value: Any, what: str, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError(f"{what} must be a list")
    if len(value) > most:
        raise ProtocolError(f"{what} has {len(value)} entries; at most {most} are accepted")
    return value


def checked_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise ProtocolError(f"{what} must be a string of 1 to {MAX_NAME_CHARS} characters")
    return value


def checked_integer(value: Any, what: str, low: int, high: int) -> int:
    # bool is an int in Python, and JSON's true must not pass as 1.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"{what} must be an integer from {low} to {high}")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{what} must be true or false")
    return value


def checked_shape(value: Any, name: str) -> list[int]:
    dims = _list(value, f"input {echo(name)}: shape", MAX_DIMS)
    return [checked_integer(d, f"input {echo(name)}: each dimension", 0, MAX_DIM) for d in dims]


def element_count(shape: list[int], limit: int, name: str, kind: ErrorKind) -> int:
    """The product of ``shape``, refused as soon as it passes ``limit`` (no big-int arithmetic)."""
    count = 1
    for dim in shape:
        count *= dim
        if count > limit:
            raise ProtocolError(f"input {echo(name)}: shape {shape} has more than {limit} elements", kind)
    return count


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """``Inference-Header-Content-Length``: where the JSON ends and binary data begins."""
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:
        raise ProtocolError("Inference-Header-Content-Length is not a number of bytes")
    length = int(value)
    if length > body_length:
        raise ProtocolError("Inference-Header-Content-Length is larger than the body")
    return length


def split_bytes_elements(raw: bytes, count: int, name: str) -> list[bytes]:
    """BYTES in binary form: each element is a 4-byte little-endian length, then the bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(elements) == count:
            raise ProtocolError(f"input {echo(name)}: more BYTES elements than its shape declares")
        if offset + 4 > len(raw):
            raise ProtocolError(f"input {echo(name)}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"input {echo(name)}: truncated BYTES element")
        elements.append(raw[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise ProtocolError(f"input {echo(name)}: {len(elements)} BYTES elements for a shape of {count}")
    return elements


def pack_bytes_elements(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _json_bytes_elements(data: Any, count: int, name: str) -> list[bytes]:
    """BYTES as JSON: strings, in a flat or nested list, as many as the shape declares."""
    elements: list[bytes] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            elements.append(item.encode())
        else:
            raise ProtocolError(f"input {echo(name)}: BYTES data must be strings")
        if len(elements) > count:
            raise ProtocolError(f"input {echo(name)}: more BYTES elements than its shape declares")
    if len(elements) != count:
        raise ProtocolError(f"input {echo(name)}: {len(elements)} BYTES elements for a shape of {count}")
    return elements


def check_in_range(values: np.ndarray, dtype: np.dtype[Any], name: str) -> None:
    """JSON numbers must fit the declared datatype exactly: no silent wrap, clip or rounding."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ProtocolError(f"input {echo(name)}: numbers must be finite")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.dtype.kind == "f":
            if (values != np.floor(values)).any():
                raise ProtocolError(f"input {echo(name)}: {V2_NAMES[dtype]} data must be whole numbers")
            # float(2**63 - 1) rounds up to 2**63: compare against the first value out of range.
            if values.size and (values.min() < float(info.min) or values.max() >= float(info.max) + 1.0):
                raise ProtocolError(f"input {echo(name)}: values outside the range of {V2_NAMES[dtype]}")
            return
        low, high = info.min, info.max  # integer values against integer bounds: exact
    elif dtype.kind == "f":
        low, high = -int(np.finfo(dtype).max), int(np.finfo(dtype).max)
    else:  # bool
        low, high = 0, 1
    if values.size and (values.min() < low or values.max() > high):
        raise ProtocolError(f"input {echo(name)}: values outside the range of {V2_NAMES[dtype]}")


# numpy holds the GIL for a whole conversion, and the event loop shares the process: a 20 MB
# list of numbers converted at once stalls it for most of a second. Slices keep each hold short.
SLICE = 65536


def _json_array(data: list[Any], shape: list[int], count: int, name: str) -> np.ndarray:
    """``count`` JSON numbers as an array: nested along ``shape`` (converted a row at a time,
    each row checked before the next) or flat (in slices). Lengths are checked first: a body
    of five million one-number rows is refused before a single row is converted."""
    if data and isinstance(data[0], list):
        if not shape or len(data) != shape[0]:
            raise ProtocolError(f"input {echo(name)}: {len(data)} rows for shape {shape}")
        row_size = count // shape[0]
        rows = []
        for row in data:
            rows.append(np.asarray(row))
            if rows[-1].size != row_size or rows[-1].shape != rows[0].shape:
                raise ProtocolError(f"input {echo(name)}: rows must each hold {row_size} values, nested alike")
        return np.stack(rows)
    if len(data) != count:
        raise ProtocolError(f"input {echo(name)}: {len(data)} values for shape {shape}")
    return np.concatenate([np.asarray(data[i : i + SLICE]) for i in range(0, len(data), SLICE)] or [np.asarray([])])


def array_from_raw(name: str, datatype: str, shape: list[int], count: int, raw: bytes) -> np.ndarray:
    """A numeric tensor's binary data (little-endian, row-major) as an array, without a copy."""
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            f"input {echo(name)}: binary data is {len(raw)} bytes; shape {shape} of {datatype} needs "
            f"{count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _numeric(name: str, datatype: str, shape: list[int], count: int, data: Any, raw: bytes | None) -> np.ndarray:
    dtype = DTYPES[datatype]
    if raw is not None:
        return array_from_raw(name, datatype, shape, count, raw)
    if not isinstance(data, list):
        raise ProtocolError(f"input {echo(name)}: data must be a list")
    try:
        values = _json_array(data, shape, count, name)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"input {echo(name)}: data must be a flat or regularly nested list of numbers") from exc
    if values.dtype.kind not in "biuf":
        raise ProtocolError(f"input {echo(name)}: data must be numbers")
    check_in_range(values, dtype, name)
    return values.astype(dtype).reshape(shape)


@dataclass(frozen=True)
class TensorHeader:
    """An input tensor's declaration, checked against the limits before its data is looked at."""

    name: str
    datatype: str
    shape: list[int]
    count: int
    """Elements the shape declares."""


def checked_header(name: Any, datatype: Any, shape: Any, limits: TensorLimits) -> TensorHeader:
    """An input's name, datatype and shape, every protocol's way: sizes are bounded before any
    arithmetic on them, and the element count against ``limits`` as it is multiplied out."""
    name = checked_text(name, "an input's name")
    if not isinstance(datatype, str) or (datatype != "BYTES" and datatype not in DTYPES):
        raise ProtocolError(f"input {echo(name)}: unsupported datatype {echo(datatype)}")
    dims = checked_shape(shape, name)
    if dims and dims[0] > limits.max_batch:
        raise ProtocolError(
            f"input {echo(name)}: {dims[0]} images in one request; at most {limits.max_batch} are accepted",
            ErrorKind.TOO_MANY_IMAGES,
        )
    if datatype == "BYTES":
        count = element_count(dims, limits.max_byte_elements, name, ErrorKind.TOO_MANY_IMAGES)
    else:
        count = element_count(dims, limits.max_elements, name, ErrorKind.PAYLOAD_TOO_LARGE)
    return TensorHeader(name, datatype, dims, count)


def _input(spec: Any, binary: bytes, offset: int, limits: TensorLimits) -> tuple[InputTensor, int]:
    """One input tensor, and the offset of the next one's binary data."""
    spec = _object(spec, "each input")
    name = checked_text(spec.get("name"), "an input's name")
    if "shape" not in spec:
        raise ProtocolError(f"input {echo(name)}: needs a shape")
    header = checked_header(name, spec.get("datatype"), spec["shape"], limits)
    datatype, shape, count = header.datatype, header.shape, header.count
    size = _object(spec.get("parameters"), f"input {echo(name)}: parameters").get("binary_data_size")
    raw = None
    if size is not None:
        size = checked_integer(size, f"input {echo(name)}: binary_data_size", 0, len(binary) - offset)
        raw = binary[offset : offset + size]
        offset += size
    elif "data" not in spec:
        raise ProtocolError(f"input {echo(name)} has neither data nor binary_data_size")
    if datatype == "BYTES":
        elements = (
            split_bytes_elements(raw, count, name)
            if raw is not None
            else _json_bytes_elements(spec["data"], count, name)
        )
        return InputTensor(name, datatype, shape, elements=elements), offset
    return InputTensor(
        name, datatype, shape, array=_numeric(name, datatype, shape, count, spec.get("data"), raw)
    ), offset


def _output(spec: Any, default_binary: bool) -> RequestedOutput:
    spec = _object(spec, "each output")
    name = checked_text(spec.get("name"), "an output's name")
    parameters = _object(spec.get("parameters"), f"output {echo(name)}: parameters")
    return RequestedOutput(
        name=name,
        binary=_flag(parameters.get("binary_data", default_binary), f"output {echo(name)}: binary_data"),
        # Its bound is the service's one top-k check (limits.max_top_k), as on every protocol.
        classification=checked_integer(
            parameters.get("classification", 0), f"output {echo(name)}: classification", 0, MAX_DIM
        ),
    )


def checked_timeout_us(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ProtocolError("parameters.timeout must be a positive number of microseconds")
    return float(value)


def parse_infer_request(body: bytes, header_length: int | None, limits: TensorLimits) -> InferRequest:
    """Validate every field, and the declared sizes against ``limits``, before converting
    or splitting any tensor. CPU work: call it off the event loop."""
    json_part, binary = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:
        request = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("the inference header is not valid JSON") from exc
    request = _object(request, "an inference request")
    request_id = request.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_NAME_CHARS):
        raise ProtocolError(f"id must be a string of at most {MAX_NAME_CHARS} characters")
    parameters = _object(request.get("parameters"), "parameters")
    default_binary = _flag(parameters.get("binary_data_output", False), "parameters.binary_data_output")
    timeout_us = checked_timeout_us(parameters.get("timeout"))
    specs = _list(request.get("inputs"), "inputs", MAX_TENSORS) if "inputs" in request else []
    if not specs:
        raise ProtocolError("an inference request needs a non-empty 'inputs' list")
    outputs = [_output(o, default_binary) for o in _list(request.get("outputs") or [], "outputs", MAX_TENSORS)]
    inputs, offset = [], 0
    for spec in specs:
        tensor, offset = _input(spec, binary, offset, limits)
        inputs.append(tensor)
    if offset != len(binary):
        raise ProtocolError("binary data left over after the last input")
    return InferRequest(
        request_id[:MAX_NAME_CHARS] if request_id else request_id, inputs, outputs, parameters, timeout_us
    )


def model_images(request: InferRequest, input_name: str, item_shape: tuple[int, ...]) -> np.ndarray | list[bytes]:
    """The request's images for a model with one image input: a uint8 [n, *item_shape] array
    of pixels (UINT8, or FP32 holding 0-255), or a list of encoded images (BYTES)."""
    if len(request.inputs) != 1:
        raise ProtocolError("this model takes exactly one input")
    tensor = request.inputs[0]
    if tensor.name != input_name:
        raise ProtocolError(f"unknown input {echo(tensor.name)}; this model takes {input_name!r}")
    if tensor.datatype == "BYTES":
        return tensor.elements
    array = tensor.array
    if tensor.datatype not in ("UINT8", "FP32") or array is None or tuple(array.shape[1:]) != item_shape:
        raise ProtocolError(
            f"send images as UINT8 or FP32 [batch, {', '.join(map(str, item_shape))}], or BYTES of encoded images"
        )
    if array.dtype == np.uint8:
        return array
    if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 255):
        raise ProtocolError("FP32 pixel values must be finite and from 0 to 255")
    return to_uint8_pixels(array)


def check_outputs(outputs: list[RequestedOutput], output_name: str) -> None:
    """Before the model runs: every requested output must exist."""
    for out in outputs:
        if out.name != output_name:
            raise ProtocolError(f"unknown output {echo(out.name)}; this model has {output_name!r}")


def classification_elements(classes: list[list[Prediction]], k: int) -> list[list[bytes]]:
    """Per row, the best k as ``"score:index:label"``, best first (Triton's format)."""
    return [[f"{p.score:f}:{p.index}:{p.label}".encode() for p in row[:k]] for row in classes]


def encode_infer_response(
    model: str,
    version: int,
    request_id: str | None,
    output_name: str,
    probabilities: np.ndarray,
    requested: list[RequestedOutput],
    classes: list[list[Prediction]],
    output_dtype: str = "float32",
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary parts follow it.
    ``classes`` holds each row's top classes, as many as the largest ``classification`` asked;
    the output tensor has the manifest's ``output_dtype``, as the model's metadata says."""
    dtype = DTYPES[v2_datatype(output_dtype)]
    wanted = requested or [RequestedOutput(output_name, binary=False)]
    outputs, blobs = [], []
    for out in wanted:
        entry: dict[str, Any]
        if out.classification:
            k = min(out.classification, probabilities.shape[-1])
            elements = classification_elements(classes, k)
            shape = [len(elements), k]
            entry = {"name": out.name, "datatype": "BYTES", "shape": shape}
            flat = [e for row in elements for e in row]
            if out.binary:
                blob = pack_bytes_elements(flat)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = [e.decode() for e in flat]
        else:
            array = np.ascontiguousarray(probabilities, dtype=dtype)
            entry = {"name": out.name, "datatype": V2_NAMES[dtype], "shape": list(array.shape)}
            if out.binary:
                blob = array.tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = array.ravel()
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": outputs}
    if request_id is not None:
        response["id"] = request_id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
