"""The Open Inference Protocol's gRPC messages to and from the v2 codec's request and response
(``server/v2_codec.py``): the same checks, limits and error messages as over HTTP.

Pure: bytes in, arrays out, and the reverse. Tensor data comes as ``raw_input_contents`` (what
tritonclient sends: little-endian numbers, BYTES elements behind 4-byte lengths) or as typed
``contents``; the answer comes back the way the request came (raw unless every input was typed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from model_contract.errors import echo
from model_contract.manifest import ModelManifest
from server.grpc_api import inference_pb2 as pb
from server.top_k import Prediction
from server.v2_codec import (
    DTYPES,
    MAX_DIM,
    MAX_NAME_CHARS,
    MAX_TENSORS,
    V2_NAMES,
    InferRequest,
    InputTensor,
    ProtocolError,
    RequestedOutput,
    TensorHeader,
    TensorLimits,
    array_from_raw,
    check_in_range,
    check_outputs,
    checked_header,
    checked_integer,
    checked_text,
    checked_timeout_us,
    classification_elements,
    model_images,
    pack_bytes_elements,
    split_bytes_elements,
    v2_datatype,
)

# Which typed field holds each datatype's values (FP16 has none: it travels raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# Each typed field's own element type: values are read at that width, then checked against the
# declared datatype's range (a UINT8 tensor's values arrive as uint32).
FIELD_DTYPE = {
    "bool_contents": np.dtype(bool),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}

Parameter = bool | int | float | str


def _parameter(value: pb.InferParameter) -> Parameter | None:
    choice = value.WhichOneof("parameter_choice")
    if choice is None:
        return None
    parameter: Parameter = getattr(value, choice)
    return parameter


def _parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Parameter | None]:
    if len(parameters) > MAX_TENSORS:
        raise ProtocolError(f"{len(parameters)} parameters; at most {MAX_TENSORS} are accepted")
    return {checked_text(key, "a parameter's name"): _parameter(value) for key, value in parameters.items()}


def _typed(header: TensorHeader, contents: pb.InferTensorContents) -> InputTensor:
    """A tensor's typed contents: its datatype's field alone, as many values as its shape says,
    counted before any is converted."""
    name, datatype = header.name, header.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise ProtocolError(f"input {echo(name)}: {datatype} data can only be sent in raw_input_contents")
    filled = {descriptor.name for descriptor, _ in contents.ListFields()}
    if filled - {field}:
        raise ProtocolError(f"input {echo(name)}: {datatype} data goes in contents.{field}")
    values = getattr(contents, field)
    if len(values) != header.count:
        raise ProtocolError(f"input {echo(name)}: {len(values)} values for shape {header.shape}")
    if datatype == "BYTES":
        return InputTensor(name, datatype, header.shape, elements=list(values))
    dtype = DTYPES[datatype]
    wide = np.fromiter(values, dtype=FIELD_DTYPE[field], count=len(values))
    check_in_range(wide, dtype, name)
    return InputTensor(name, datatype, header.shape, array=wide.astype(dtype).reshape(header.shape))


def _raw(header: TensorHeader, raw: bytes) -> InputTensor:
    if header.datatype == "BYTES":
        return InputTensor(
            header.name, "BYTES", header.shape, elements=split_bytes_elements(raw, header.count, header.name)
        )
    array = array_from_raw(header.name, header.datatype, header.shape, header.count, raw)
    return InputTensor(header.name, header.datatype, header.shape, array=array)


def _output(spec: pb.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    name = checked_text(spec.name, "an output's name")
    parameters = _parameters(spec.parameters)
    k = parameters.get("classification", 0)
    # Its bound is the service's one top-k check (limits.max_top_k), as on every protocol.
    return RequestedOutput(
        name, binary=True, classification=checked_integer(k, f"output {echo(name)}: classification", 0, MAX_DIM)
    )


def parse_infer(request: pb.ModelInferRequest, limits: TensorLimits) -> InferRequest:
    """Validate every field, and the declared sizes against ``limits``, before converting any
    tensor. CPU work: call it off the event loop."""
    if len(request.id) > MAX_NAME_CHARS:
        raise ProtocolError(f"id must be a string of at most {MAX_NAME_CHARS} characters")
    parameters = _parameters(request.parameters)
    timeout_us = checked_timeout_us(parameters.get("timeout"))
    if not request.inputs:
        raise ProtocolError("an inference request needs at least one input")
    if len(request.inputs) > MAX_TENSORS or len(request.outputs) > MAX_TENSORS:
        raise ProtocolError(f"at most {MAX_TENSORS} inputs and {MAX_TENSORS} outputs are accepted")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input")
    outputs = [_output(o) for o in request.outputs]
    inputs = []
    for i, spec in enumerate(request.inputs):
        header = checked_header(spec.name, spec.datatype, list(spec.shape), limits)
        if raw:
            if spec.HasField("contents"):
                raise ProtocolError(f"input {echo(header.name)}: data in both contents and raw_input_contents")
            inputs.append(_raw(header, raw[i]))
        else:
            inputs.append(_typed(header, spec.contents))
    return InferRequest(request.id or None, inputs, outputs, parameters, timeout_us)


def decode_request(message: bytes) -> pb.ModelInferRequest:
    try:
        request: pb.ModelInferRequest = pb.ModelInferRequest.FromString(message)
    except DecodeError as exc:
        raise ProtocolError("the message is not a ModelInferRequest") from exc
    return request


ForModel = tuple[InferRequest, np.ndarray | list[bytes], bool]
"""The request, the model's images, and whether to answer in raw_output_contents."""


def check_for_model(request: pb.ModelInferRequest, limits: TensorLimits, manifest: ModelManifest) -> ForModel:
    """Everything about a ``ModelInferRequest`` that can be checked before the model runs."""
    parsed = parse_infer(request, limits)
    check_outputs(parsed.outputs, manifest.output.name)
    return parsed, model_images(parsed, manifest.input.name, manifest.item_shape), bool(request.raw_input_contents)


def parse_for_model(message: bytes, limits: TensorLimits, manifest: ModelManifest) -> ForModel:
    """``check_for_model`` of a serialized request: picklable, for a parsing worker process."""
    return check_for_model(decode_request(message), limits, manifest)


def _set_typed(contents: pb.InferTensorContents, datatype: str, values: Sequence[Any] | np.ndarray) -> None:
    getattr(contents, CONTENTS_FIELD[datatype]).extend(values)


def encode_infer_response(
    model: str,
    version: int,
    request_id: str | None,
    output_name: str,
    probabilities: np.ndarray,
    requested: list[RequestedOutput],
    classes: list[list[Prediction]],
    output_dtype: str,
    raw: bool,
) -> bytes:
    """A serialized ``ModelInferResponse``; ``classes`` holds each row's top classes, as many as
    the largest ``classification`` asked."""
    response = pb.ModelInferResponse(model_name=model, model_version=str(version), id=request_id or "")
    dtype = DTYPES[v2_datatype(output_dtype)]
    # A response is raw or typed throughout, and FP16 has no typed field.
    raw = raw or V2_NAMES[dtype] not in CONTENTS_FIELD
    for out in requested or [RequestedOutput(output_name, binary=raw)]:
        tensor = response.outputs.add(name=out.name)
        if out.classification:
            k = min(out.classification, probabilities.shape[-1])
            elements = [e for row in classification_elements(classes, k) for e in row]
            tensor.datatype = "BYTES"
            tensor.shape.extend([len(classes), k])
            if raw:
                response.raw_output_contents.append(pack_bytes_elements(elements))
            else:
                _set_typed(tensor.contents, "BYTES", elements)
        else:
            array = np.ascontiguousarray(probabilities, dtype=dtype)
            tensor.datatype = V2_NAMES[dtype]
            tensor.shape.extend(array.shape)
            if raw:
                response.raw_output_contents.append(array.tobytes())
            else:
                _set_typed(tensor.contents, tensor.datatype, array.ravel().tolist())
    serialized: bytes = response.SerializeToString()
    return serialized
