"""Open Inference Protocol v2 (KServe v2, as Triton speaks it): request and response codec.

Covers JSON tensors, the binary tensor data extension (``Inference-Header-Content-Length``,
``binary_data_size``, ``binary_data`` / ``binary_data_output``) and the classification
extension (``"classification": k`` on an output gives BYTES ``"score:index:label"``). It is
pure: bytes in, arrays out, and the reverse; the routes own HTTP.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

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


class ProtocolError(ValueError):
    """The request does not follow the protocol; the message says how."""


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


def _split_bytes_elements(raw: bytes) -> list[bytes]:
    """BYTES in binary form: each element is a 4-byte little-endian length, then the bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError("truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError("truncated BYTES element")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def _pack_bytes_elements(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _numeric(datatype: str, shape: list[int], data: Any, raw: bytes | None) -> np.ndarray:
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise ProtocolError(f"unsupported datatype {datatype}")
    count = int(np.prod(shape)) if shape else 1
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise ProtocolError(
                f"binary data is {len(raw)} bytes; shape {shape} of {datatype} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    array = np.asarray(data, dtype=dtype)
    if array.size != count:
        raise ProtocolError(f"{array.size} values for shape {shape}")
    return array.reshape(shape)


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    json_part, binary = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    if header_length is not None and header_length > len(body):
        raise ProtocolError("Inference-Header-Content-Length is larger than the body")
    try:
        request = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"the inference header is not JSON: {exc}") from exc
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError("an inference request needs a non-empty 'inputs' list")
    parameters = request.get("parameters") or {}
    offset = 0
    inputs = []
    for spec in request["inputs"]:
        try:
            name, datatype, shape = spec["name"], spec["datatype"], [int(d) for d in spec["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError("each input needs name, datatype and shape") from exc
        size = (spec.get("parameters") or {}).get("binary_data_size")
        raw = None
        if size is not None:
            raw = binary[offset : offset + int(size)]
            if len(raw) != int(size):
                raise ProtocolError(f"input {name}: binary data is shorter than binary_data_size")
            offset += int(size)
        elif "data" not in spec:
            raise ProtocolError(f"input {name} has neither data nor binary_data_size")
        if datatype == "BYTES":
            if raw is not None:
                elements = _split_bytes_elements(raw)
            else:
                elements = [e.encode() if isinstance(e, str) else bytes(e) for e in np.ravel(spec["data"]).tolist()]
            inputs.append(InputTensor(name, datatype, shape, elements=elements))
        else:
            inputs.append(InputTensor(name, datatype, shape, array=_numeric(datatype, shape, spec.get("data"), raw)))
    if offset != len(binary):
        raise ProtocolError("binary data left over after the last input")
    default_binary = bool(parameters.get("binary_data_output", False))
    outputs = [
        RequestedOutput(
            name=o["name"],
            binary=bool((o.get("parameters") or {}).get("binary_data", default_binary)),
            classification=int((o.get("parameters") or {}).get("classification", 0)),
        )
        for o in request.get("outputs") or []
    ]
    return InferRequest(request.get("id"), inputs, outputs, parameters)


def classification_elements(probabilities: np.ndarray, k: int, labels: list[str]) -> list[list[bytes]]:
    """Per row, the top k as ``"score:index:label"``, best first (Triton's format)."""
    rows = []
    for row in probabilities:
        top = np.argsort(-row, kind="stable")[:k]
        rows.append([f"{row[i]:f}:{i}:{labels[i]}".encode() for i in top])
    return rows


def encode_infer_response(
    model: str,
    version: int,
    request_id: str | None,
    output_name: str,
    probabilities: np.ndarray,
    requested: list[RequestedOutput],
    labels: list[str],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary parts follow it."""
    wanted = requested or [RequestedOutput(output_name, binary=False)]
    outputs, blobs = [], []
    for out in wanted:
        if out.name != output_name:
            raise ProtocolError(f"unknown output {out.name!r}; this model has {output_name!r}")
        entry: dict[str, Any]
        if out.classification:
            elements = classification_elements(probabilities, out.classification, labels)
            shape = [len(elements), out.classification]
            entry = {"name": out.name, "datatype": "BYTES", "shape": shape}
            flat = [e for row in elements for e in row]
            if out.binary:
                blob = _pack_bytes_elements(flat)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = [e.decode() for e in flat]
        else:
            array = np.ascontiguousarray(probabilities, dtype=np.float32)
            entry = {"name": out.name, "datatype": "FP32", "shape": list(array.shape)}
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
