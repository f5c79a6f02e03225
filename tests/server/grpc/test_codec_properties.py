"""Property tests of the gRPC codec (``server/grpc_api/codec.py``), twins of the v2 codec's
(``tests/server/test_codec_properties.py``): whatever the bytes, a ModelInferRequest parses to a
request within its limits or raises a client error; nothing else escapes. And where a request
can be written both ways, the gRPC codec answers exactly as the HTTP codec answers its JSON or
binary twin: the same request, or an error of the same kind (each protocol words some
messages its own way: "raw_input_contents" where HTTP says "binary data").

A twin is one request in a neutral form (``Twin``), rendered as a ModelInferRequest and as a v2
HTTP body (raw contents as the binary extension, typed contents as JSON data), then parsed by
each codec with the same limits. The budget is the hypothesis profile's (tests/conftest.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from model_contract.errors import ErrorKind, ServiceError
from server.api.error_handlers import HTTP_STATUS
from server.grpc_api import inference_pb2 as pb
from server.grpc_api.codec import CONTENTS_FIELD, check_for_model, decode_request, parse_infer
from server.grpc_api.status import GRPC_STATUS
from server.grpc_api.wire import peek_request
from server.top_k import check_top_k
from server.v2_codec import (
    MAX_NAME_CHARS,
    MAX_TENSORS,
    TensorLimits,
    check_outputs,
    model_images,
    parse_infer_request,
)
from tests.fakes import fake_manifest
from tests.helpers import png
from tests.server.grpc.bad_input import (
    LENGTH,
    Field,
    encoded_request,
    mutate,
    pack_bytes,
    pixels_request,
    serialize,
)

ITEM_SHAPE = (8, 8, 3)
ITEM = math.prod(ITEM_SHAPE)
MAX_IMAGES = 4
LIMITS = TensorLimits.for_images(MAX_IMAGES, ITEM_SHAPE)
MANIFEST = fake_manifest()  # input "images" uint8 [-1, 8, 8, 3], output "probabilities"

INT64 = (-(2**63), 2**63 - 1)
# Each typed field's range on the wire: what a hostile value can be there.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1) | st.sampled_from([-(2**31), -129, -1, 128, 256, 2**31 - 1]),
    "int64_contents": st.integers(*INT64) | st.sampled_from([*INT64, -(2**31) - 1, 2**31]),
    "uint_contents": st.integers(0, 2**32 - 1) | st.sampled_from([0, 255, 256, 65536, 2**32 - 1]),
    "uint64_contents": st.integers(0, 2**64 - 1) | st.sampled_from([0, 255, 2**63, 2**64 - 1]),
    "fp32_contents": st.floats(width=32, allow_nan=False, allow_infinity=False)
    | st.sampled_from([-1.0, 0.5, 255.0, 255.5, 256.0, 3.4e38]),
    "fp64_contents": st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([-1.0, 1e308, 2.0**64]),
}
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES"]  # fmt: skip


# --- twins --------------------------------------------------------------------------------------


@dataclass
class Tensor:
    name: str = "images"
    datatype: str = "UINT8"
    shape: list[int] = field(default_factory=lambda: [1, *ITEM_SHAPE])
    raw: bytes | None = None
    """Raw contents (gRPC) / the binary extension's bytes (HTTP); else ``values`` are typed."""
    values: list[Any] = field(default_factory=list)
    """Typed contents (gRPC, in the datatype's field) / JSON data (HTTP)."""


Parameter = bool | int | float | str | None


@dataclass
class Twin:
    inputs: list[Tensor]
    outputs: list[tuple[str, dict[str, Parameter]]] = field(default_factory=list)
    id: str = ""
    parameters: dict[str, Parameter] = field(default_factory=dict)
    extra_raw: list[bytes] = field(default_factory=list)
    """Raw contents past the last input (gRPC) / binary data left over (HTTP)."""


def set_parameter(target: pb.InferParameter, value: Parameter) -> None:
    """A JSON value as the InferParameter that carries it (None: a parameter with no value)."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if INT64[0] <= value <= INT64[1]:
            target.int64_param = value
        else:
            target.uint64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value


def to_grpc(twin: Twin) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="fake", id=twin.id)
    for key, value in twin.parameters.items():
        set_parameter(request.parameters[key], value)
    for t in twin.inputs:
        tensor = request.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        if t.raw is not None:
            request.raw_input_contents.append(t.raw)
        elif t.values and t.datatype in CONTENTS_FIELD:
            getattr(tensor.contents, CONTENTS_FIELD[t.datatype]).extend(t.values)
    for name, parameters in twin.outputs:
        output = request.outputs.add(name=name)
        for key, value in parameters.items():
            set_parameter(output.parameters[key], value)
    request.raw_input_contents.extend(twin.extra_raw)
    return request


def to_http(twin: Twin) -> tuple[bytes, int | None]:
    """The v2 body and its Inference-Header-Content-Length (None: JSON alone)."""
    inputs, binary = [], b""
    for t in twin.inputs:
        spec: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if t.raw is not None:
            spec["parameters"] = {"binary_data_size": len(t.raw)}
            binary += t.raw
        else:
            spec["data"] = [v.decode() for v in t.values] if t.datatype == "BYTES" else t.values
        inputs.append(spec)
    document: dict[str, Any] = {"inputs": inputs}
    if twin.id:
        document["id"] = twin.id
    if twin.parameters:
        document["parameters"] = twin.parameters
    if twin.outputs:
        document["outputs"] = [{"name": name, "parameters": parameters} for name, parameters in twin.outputs]
    header = orjson.dumps(document)
    binary += b"".join(twin.extra_raw)
    return (header + binary, len(header)) if binary or any(t.raw is not None for t in twin.inputs) else (header, None)


# --- outcomes -----------------------------------------------------------------------------------


def outcome(call: Callable[[], Any]) -> Any:
    """What a codec made of a request: ("ok", a comparable summary) or ("error", kind, message).
    A client error must be a 4xx on HTTP and a client's status on gRPC; any other exception
    escapes and fails the test."""
    try:
        return ("ok", call())
    except ServiceError as exc:
        assert 400 <= HTTP_STATUS[exc.kind] < 500, (exc.kind, exc.message)
        assert GRPC_STATUS[exc.kind] is grpc.StatusCode.INVALID_ARGUMENT, (exc.kind, exc.message)
        assert len(exc.message) <= 400
        return ("error", exc.kind, exc.message)


def summary(parsed: Any) -> tuple[Any, ...]:
    """A parsed request, comparable across codecs (HTTP's binary_data flags aside)."""
    tensors = tuple(
        (t.name, t.datatype, tuple(t.shape), tuple(t.elements) if t.datatype == "BYTES" else t.array.tobytes())
        for t in parsed.inputs
    )
    outputs = tuple((o.name, o.classification) for o in parsed.outputs)
    return parsed.id or None, parsed.timeout_us, tensors, outputs


def images_of(images: Any) -> Any:
    if isinstance(images, list):
        return ("encoded", len(images), tuple(images))
    return ("pixels", len(images), (images.dtype.str, images.shape, images.tobytes()))


def grpc_parsed(twin: Twin) -> Any:
    request = decode_request(to_grpc(twin).SerializeToString())  # through the wire, as served
    return outcome(lambda: summary(parse_infer(request, LIMITS)))


def http_parsed(twin: Twin) -> Any:
    body, header_length = to_http(twin)
    return outcome(lambda: summary(parse_infer_request(body, header_length, LIMITS)))


def grpc_for_model(twin: Twin) -> Any:
    def call() -> Any:
        parsed, images, _ = check_for_model(decode_request(to_grpc(twin).SerializeToString()), LIMITS, MANIFEST)
        return summary(parsed), images_of(images)

    return outcome(call)


def http_for_model(twin: Twin) -> Any:
    def call() -> Any:
        body, header_length = to_http(twin)
        parsed = parse_infer_request(body, header_length, LIMITS)
        check_outputs(parsed.outputs, MANIFEST.output.name)
        return summary(parsed), images_of(model_images(parsed, MANIFEST.input.name, ITEM_SHAPE))

    return outcome(call)


def same(grpc_result: Any, http_result: Any) -> bool:
    """The same request, or the same kind of error (each protocol words its messages)."""
    return grpc_result[:2] == http_result[:2]


def assert_twins_agree(twin: Twin) -> Any:
    """Both codecs, parsing alone and then everything checked before the model runs."""
    parsed, http = grpc_parsed(twin), http_parsed(twin)
    assert same(parsed, http), (parsed, http, twin)
    for_model, http = grpc_for_model(twin), http_for_model(twin)
    assert same(for_model, http), (for_model, http, twin)
    return for_model


# --- valid requests, and the fields a hostile client replaces --------------------------------------


def pixels(count: int, dtype: Any = np.uint8) -> np.ndarray:
    return (np.arange(count * ITEM) % 251).astype(dtype).reshape(count, *ITEM_SHAPE)


def base_twins() -> dict[str, Twin]:
    """Valid requests of every form this model takes: raw and typed, pixels and encoded images."""

    def asking_top_3(tensor: Tensor) -> Twin:
        return Twin([tensor], [("probabilities", {"classification": 3})], id="r1", parameters={"timeout": 1000})

    u8, f32 = pixels(2), pixels(1, np.float32)
    return {
        "uint8-raw": asking_top_3(Tensor(shape=[2, *ITEM_SHAPE], raw=u8.tobytes())),
        "uint8-typed": asking_top_3(Tensor(shape=[2, *ITEM_SHAPE], values=u8.ravel().tolist())),
        "fp32-raw": asking_top_3(Tensor(datatype="FP32", raw=f32.tobytes())),
        "fp32-typed": asking_top_3(Tensor(datatype="FP32", values=f32.ravel().tolist())),
        "bytes-raw": asking_top_3(Tensor(datatype="BYTES", shape=[2], raw=pack_bytes([b"png-1", b"jpeg-2"]))),
        "bytes-typed": asking_top_3(Tensor(datatype="BYTES", shape=[1], values=[b"photo"])),
    }


BASES = list(base_twins())

names = st.text(max_size=12) | st.sampled_from(["", "images", "probabilities", "x" * (MAX_NAME_CHARS + 1), "\x00"])
dims = st.integers(*INT64) | st.sampled_from([-1, 0, 1, 2, MAX_IMAGES + 1, 2**31 - 1, 2**31, *INT64])
shapes = st.lists(dims, max_size=12) | st.sampled_from(
    [[], [1], [2**31 - 1] * 8, [1] + [2**31 - 1] * 7, [64, 2**31 - 1, 2**31 - 1, 3], [1] * 9, [0, *ITEM_SHAPE]]
)
# JSON-representable parameter values: what either protocol can carry.
parameters = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**64 - 1, 1e308, 5e-324, 3.0, "1000", "nan", True])
)


@st.composite
def typed_values(draw: st.DrawFn, datatype: str, count: int) -> list[Any]:
    """Values for ``datatype``'s own typed field, of any length near ``count``."""
    length = draw(st.sampled_from([count, count, max(count - 1, 0), count + 1, 0]))
    if datatype == "BYTES":
        return draw(st.lists(st.text(max_size=8).map(str.encode), min_size=length, max_size=length))
    strategy = FIELD_VALUES[CONTENTS_FIELD[datatype]]
    return draw(st.lists(strategy, min_size=length, max_size=length))


def stored_as(values: list[Any], datatype: str) -> list[Any]:
    """Typed values moved to ``datatype``'s field, as that field stores them (float32, bool...)."""
    if datatype == "BYTES":
        return [v if isinstance(v, bytes) else str(v).encode() for v in values]
    numbers = [1 if isinstance(v, bytes) else v for v in values]
    if datatype not in CONTENTS_FIELD or datatype == "FP16":
        return numbers
    field_name = CONTENTS_FIELD[datatype]
    convert = bool if field_name == "bool_contents" else float if field_name.startswith("fp") else int
    stored = getattr(pb.InferTensorContents(), field_name)
    stored.extend(convert(v) for v in numbers)
    return list(stored)


@st.composite
def hostile_twins(draw: st.DrawFn) -> tuple[str, str, Twin]:
    """A valid request with one field replaced by a hostile value: (base, what, twin)."""
    base = draw(st.sampled_from(BASES))
    twin = base_twins()[base]
    tensor = twin.inputs[0]
    typed = tensor.raw is None
    what = draw(
        st.sampled_from(["id", "timeout", "parameter", "name", "datatype", "shape", "dim", "data", "output name",
                         "classification", "outputs", "inputs", "extra raw"])
    )  # fmt: skip
    if what == "id":
        twin.id = draw(st.text(max_size=MAX_NAME_CHARS + 2) | st.just("x" * (MAX_NAME_CHARS + 1)))
    elif what == "timeout":
        twin.parameters["timeout"] = draw(parameters)
    elif what == "parameter":
        twin.parameters[draw(st.text(min_size=1, max_size=8))] = draw(parameters)
    elif what == "name":
        tensor.name = draw(names)
    elif what == "datatype":
        # Typed values follow the datatype into its own field, converted as that field stores them.
        tensor.datatype = draw(st.sampled_from(DATATYPES) | st.sampled_from(["", "COMPLEX64", "uint8", "STRING"]))
        if typed:
            tensor.values = stored_as(tensor.values, tensor.datatype)
    elif what == "shape":
        tensor.shape = draw(shapes)
    elif what == "dim":
        tensor.shape[draw(st.integers(0, len(tensor.shape) - 1))] = draw(dims)
    elif what == "data":
        count = math.prod(tensor.shape)
        if typed:
            tensor.values = draw(typed_values(tensor.datatype, count))
        elif tensor.datatype == "BYTES":
            elements = draw(st.lists(st.binary(max_size=12), max_size=MAX_IMAGES + 2))
            tensor.raw = pack_bytes(elements) + draw(st.binary(max_size=6))
        else:
            tensor.raw = draw(st.binary(max_size=2 * len(tensor.raw or b"") + 8))
    elif what == "output name":
        twin.outputs = [(draw(names), twin.outputs[0][1])]
    elif what == "classification":
        twin.outputs = [("probabilities", {"classification": draw(parameters)})]
    elif what == "outputs":
        twin.outputs = twin.outputs * draw(st.integers(0, MAX_TENSORS + 2))
    elif what == "inputs":
        twin.inputs = [replace(tensor) for _ in range(draw(st.sampled_from([0, 2, MAX_TENSORS, MAX_TENSORS + 1])))]
    elif what == "extra raw" and not typed:
        twin.extra_raw = [draw(st.binary(min_size=1, max_size=8))]
    return base, what, twin


# --- properties -----------------------------------------------------------------------------------


@pytest.mark.parametrize("base", BASES)
def test_the_valid_bases_parse_alike_on_both_protocols(base: str) -> None:
    result = assert_twins_agree(base_twins()[base])
    assert result[0] == "ok", result


@given(st.binary(max_size=3000))
@example(b"")
@example(b"\xff" * 11)  # a varint past 64 bits
@example(bytes([0x2A, 0x80]))  # an input whose length runs past the end
def test_any_bytes_are_a_request_or_a_client_error(message: bytes) -> None:
    parsed = outcome(lambda: check_for_model(decode_request(message), LIMITS, MANIFEST))
    peeked = outcome(lambda: peek_request(message))  # the servicer's look at the top-level fields
    if parsed[0] == "ok":
        assert peeked[0] == "ok", peeked  # what parses, the look reads too


@given(hostile_twins())
def test_one_hostile_field_gets_the_same_answer_as_its_http_twin(drawn: tuple[str, str, Twin]) -> None:
    base, what, twin = drawn
    if twin.inputs and twin.inputs[0].datatype == "FP16" and twin.inputs[0].raw is None:
        return  # no typed field carries FP16: its own test below
    result = assert_twins_agree(twin)
    event(f"{base} {what}: {result[1].value if result[0] == 'error' else 'ok'}")
    if result[0] == "ok":
        (_, timeout_us, _, outputs), images = result[1]
        assert timeout_us is None or (math.isfinite(timeout_us) and timeout_us > 0)
        assert all(0 <= k <= 2**31 - 1 for _, k in outputs)
        form, count, data = images
        assert count <= MAX_IMAGES
        if form == "pixels":
            assert data[0] == "|u1" and data[1] == (count, *ITEM_SHAPE)


@st.composite
def any_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Any ModelInferRequest the message type can hold: every field, any value of its type."""
    request = pb.ModelInferRequest(model_name=draw(st.text(max_size=8)), id=draw(st.text(max_size=20)))
    for key in draw(st.lists(st.text(max_size=8), max_size=3)):
        set_parameter(request.parameters[key], draw(parameters))
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(names), datatype=draw(st.sampled_from([*DATATYPES, "", "COMPLEX64"])), shape=draw(shapes)
        )
        for field_name in draw(st.lists(st.sampled_from([*FIELD_VALUES, "bytes_contents"]), max_size=2)):
            values = st.binary(max_size=8) if field_name == "bytes_contents" else FIELD_VALUES[field_name]
            getattr(tensor.contents, field_name).extend(draw(st.lists(values, max_size=4 * ITEM)))
    for _ in range(draw(st.integers(0, 2))):
        output = request.outputs.add(name=draw(names))
        if draw(st.booleans()):
            set_parameter(output.parameters["classification"], draw(parameters))
    request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=2 * ITEM), max_size=3)))
    return request


@given(any_requests())
def test_any_request_message_is_a_request_or_a_client_error(request: pb.ModelInferRequest) -> None:
    result = outcome(lambda: check_for_model(decode_request(request.SerializeToString()), LIMITS, MANIFEST))
    event(f"{result[1].value if result[0] == 'error' else 'ok'}")
    if result[0] == "ok":
        _, images, _ = result[1]
        assert len(images) <= MAX_IMAGES


@given(st.sampled_from(DATATYPES), st.sampled_from([*FIELD_VALUES, "bytes_contents"]), st.data())
def test_data_in_another_datatypes_typed_field_is_a_client_error(datatype: str, field_name: str, data: Any) -> None:
    """Each datatype has one typed field (FP16 none); values anywhere else are refused, before
    any is converted, with the field they belong in. gRPC alone has typed fields: no twin."""
    if CONTENTS_FIELD.get(datatype) == field_name:
        return
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="images", datatype=datatype, shape=[1, 2])
    values = st.binary(max_size=4) if field_name == "bytes_contents" else FIELD_VALUES[field_name]
    getattr(tensor.contents, field_name).extend(data.draw(st.lists(values, min_size=1, max_size=4)))
    result = outcome(lambda: parse_infer(request, LIMITS))
    assert result[:2] == ("error", ErrorKind.BAD_REQUEST), result
    expected = CONTENTS_FIELD.get(datatype, "raw_input_contents")
    assert expected in result[2], result


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: r.inputs[0].contents.uint_contents.append(1), "both contents and raw_input_contents"),
        (lambda r: r.inputs.add(name="more", datatype="UINT8", shape=[1]), "2 inputs"),
        (lambda r: r.raw_input_contents.append(b"\x01"), "2 raw_input_contents for 1 inputs"),
        (lambda r: None, None),  # unchanged: valid
        (lambda r: setattr(r.parameters["timeout"], "double_param", math.nan), "positive number of microseconds"),
        (lambda r: setattr(r.parameters["timeout"], "double_param", math.inf), "positive number of microseconds"),
        (lambda r: setattr(r.parameters["timeout"], "double_param", -0.0), "positive number of microseconds"),
        (lambda r: setattr(r.parameters["timeout"], "string_param", "1000"), "positive number of microseconds"),
        (lambda r: setattr(r.parameters["timeout"], "bool_param", True), "positive number of microseconds"),
        (lambda r: [r.parameters[f"p{i}"] for i in range(MAX_TENSORS + 1)], f"at most {MAX_TENSORS}"),
        (lambda r: r.parameters[""], "a parameter's name"),
        (lambda r: r.parameters["p" * (MAX_NAME_CHARS + 1)], "a parameter's name"),
        (lambda r: [r.outputs[0].parameters[f"p{i}"] for i in range(MAX_TENSORS + 1)], f"at most {MAX_TENSORS}"),
        (lambda r: setattr(r.outputs[0].parameters["classification"], "double_param", 3.0), "classification"),
        (lambda r: setattr(r.outputs[0].parameters["classification"], "uint64_param", 2**64 - 1), "classification"),
        (lambda r: setattr(r.outputs[0].parameters["classification"], "int64_param", -1), "classification"),
        (lambda r: r.outputs[0].parameters["classification"].Clear(), "classification"),  # without a value
        (lambda r: r.parameters["timeout"].Clear(), None),  # without a value: no timeout, as JSON's null
        (lambda r: setattr(r, "id", "i" * (MAX_NAME_CHARS + 1)), "id must be"),
    ],
    ids=["raw-and-contents", "raw-for-one-of-two-inputs", "raw-past-the-inputs", "valid", "timeout-nan",
         "timeout-inf", "timeout-negative-zero", "timeout-string", "timeout-bool", "17-parameters",
         "empty-parameter-name", "long-parameter-name", "17-output-parameters", "classification-double",
         "classification-2**64-1", "classification-negative", "classification-no-value", "timeout-no-value", "long-id"],
)  # fmt: skip
def test_grpc_only_mistakes_are_client_errors(
    build: Callable[[pb.ModelInferRequest], Any], message: str | None
) -> None:
    """What only a ModelInferRequest can say wrong (NaN and infinities, which JSON cannot carry;
    parameter maps; raw contents that do not match the inputs) is a client error, with a message
    that says what."""
    request = to_grpc(base_twins()["uint8-raw"])
    build(request)
    result = outcome(lambda: check_for_model(decode_request(request.SerializeToString()), LIMITS, MANIFEST))
    if message is None:
        assert result[0] == "ok", result
    else:
        assert result[:2] == ("error", ErrorKind.BAD_REQUEST) and message in result[2], result


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_typed_floats_must_be_finite(datatype: str, value: float) -> None:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="images", datatype=datatype, shape=[1, *ITEM_SHAPE])
    getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend([1.0] * (ITEM - 1) + [value])
    result = outcome(lambda: parse_infer(request, LIMITS))
    assert result[:2] == ("error", ErrorKind.BAD_REQUEST) and "finite" in result[2], result


def test_fp16_has_no_typed_field_and_travels_raw() -> None:
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    result = outcome(lambda: parse_infer(typed, LIMITS))
    assert result[:2] == ("error", ErrorKind.BAD_REQUEST) and "raw_input_contents" in result[2], result
    raw = Twin([Tensor(name="x", datatype="FP16", shape=[2], raw=np.array([1.5, 65504], "<f2").tobytes())])
    assert assert_twins_agree(raw)[0] == "error"  # both parse it; the model takes no FP16
    assert grpc_parsed(raw)[0] == "ok"


# A value each datatype's data cannot hold, had it been looked at.
OUT_OF_RANGE = {"UINT8": 300, "FP32": -1.0, "INT64": 2**63 - 1, "BYTES": b"x"}


@st.composite
def over_the_limits(draw: st.DrawFn) -> tuple[Twin, ErrorKind]:
    """A declared shape past the limits, with data that is wrong in some other way too (wrong
    length, out of range, lying BYTES lengths): the limit must be what refuses it."""
    datatype = draw(st.sampled_from(list(OUT_OF_RANGE)))
    limit = LIMITS.max_byte_elements if datatype == "BYTES" else LIMITS.max_elements
    shape = draw(st.lists(st.integers(1, 2**31 - 1), min_size=1, max_size=8))
    if math.prod(shape) <= limit:  # past it, by one more dimension or a larger last one
        shape = [*shape, limit + 1] if len(shape) < 8 else [*shape[:-1], limit + 1]
    if shape[0] > LIMITS.max_batch or datatype == "BYTES":
        kind = ErrorKind.TOO_MANY_IMAGES
    else:
        kind = ErrorKind.PAYLOAD_TOO_LARGE
    if draw(st.booleans()):
        lying = pack_bytes([b"x" * 8]) + (2**31).to_bytes(4, "little")  # a second element that is not there
        tensor = Tensor(datatype=datatype, shape=shape, raw=draw(st.binary(max_size=64) | st.just(lying)))
    else:
        tensor = Tensor(datatype=datatype, shape=shape, values=[OUT_OF_RANGE[datatype]] * draw(st.integers(0, 16)))
    return Twin([tensor]), kind


@given(over_the_limits())
@example((Twin([Tensor(shape=[1] + [2**31 - 1] * 7, raw=b"")]), ErrorKind.PAYLOAD_TOO_LARGE))
@example((Twin([Tensor(shape=[64, 2**31 - 1, 2**31 - 1, 3], values=[])]), ErrorKind.TOO_MANY_IMAGES))
@example((Twin([Tensor(datatype="BYTES", shape=[2**31 - 1], raw=pack_bytes([b"x"]))]), ErrorKind.TOO_MANY_IMAGES))
def test_declared_sizes_are_refused_before_any_data_is_looked_at(drawn: tuple[Twin, ErrorKind]) -> None:
    twin, kind = drawn
    result = assert_twins_agree(twin)
    assert result[:2] == ("error", kind), result
    assert "images in one request" in result[2] or "more than" in result[2], result


def shape_field(dims: list[int]) -> Field:
    """An input's shape as the wire carries it: packed varints, written by hand so that a value
    no int64 holds (2**63, 2**64 - 1, past 64 bits) can be sent."""
    return Field(3, LENGTH, dims, "packed")


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ([1, 8, 8, 2**63], "each dimension"),  # read back as -2**63
        ([1, 8, 8, 2**64 - 1], "each dimension"),  # read back as -1
        ([2**70, 8, 8, 3], "not a ModelInferRequest"),  # an 11-byte varint
        ([2**63 - 1, 8, 8, 3], "each dimension"),
        ([1] * 9, "at most 8"),
    ],
)
def test_dimensions_no_int64_holds_are_client_errors(dims: list[int], message: str) -> None:
    tensor = [Field(1, LENGTH, b"images"), Field(2, LENGTH, b"UINT8"), shape_field(dims)]
    wire = serialize([Field(5, LENGTH, tensor, "input"), Field(7, LENGTH, bytes(ITEM))])
    result = outcome(lambda: check_for_model(decode_request(wire), LIMITS, MANIFEST))
    assert result[:2] == ("error", ErrorKind.BAD_REQUEST) and message in result[2], result


@given(st.lists(st.binary(max_size=40), max_size=MAX_IMAGES + 2), st.binary(max_size=8), st.booleans())
@example([b"a"], (2**32 - 1).to_bytes(4, "little"), False)  # a length that points far past the end
@example([b"ab"], b"\x02\x00", False)  # a truncated length
def test_bytes_elements_split_exactly_or_fail_as_client_errors(elements: list[bytes], tail: bytes, typed: bool) -> None:
    """Raw BYTES whose length prefixes lie get the HTTP binary twin's answer; typed BYTES come as
    they were sent, as many as the shape says."""
    if typed:
        request = pb.ModelInferRequest()
        request.inputs.add(name="images", datatype="BYTES", shape=[len(elements) + len(tail) % 2])
        request.inputs[0].contents.bytes_contents.extend(elements)
        result = outcome(lambda: summary(parse_infer(request, LIMITS)))
        if result[0] == "ok":
            assert len(tail) % 2 == 0 and len(elements) <= MAX_IMAGES
            assert list(result[1][2][0][3]) == elements
        return
    raw = pack_bytes(elements) + tail
    result = assert_twins_agree(Twin([Tensor(datatype="BYTES", shape=[len(elements)], raw=raw)]))
    if result[0] == "ok":
        assert not tail and len(elements) <= MAX_IMAGES and list(result[1][1][2]) == elements


@given(
    st.integers(min_value=1, max_value=MAX_IMAGES),
    st.sampled_from(["UINT8", "FP32"]),
    st.booleans(),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_valid_tensors_round_trip_raw_and_typed(count: int, datatype: str, raw: bool, seed: int) -> None:
    dtype = np.uint8 if datatype == "UINT8" else np.float32
    images = np.random.default_rng(seed).integers(0, 256, size=(count, *ITEM_SHAPE)).astype(dtype)
    tensor = Tensor(datatype=datatype, shape=list(images.shape))
    if raw:
        tensor.raw = images.tobytes()
    else:
        tensor.values = images.ravel().tolist()
    request = decode_request(to_grpc(Twin([tensor])).SerializeToString())
    _, converted, answer_raw = check_for_model(request, LIMITS, MANIFEST)
    assert isinstance(converted, np.ndarray) and np.array_equal(converted, images.astype(np.uint8))
    assert answer_raw is raw  # the answer comes back the way the request came


@given(st.one_of(st.integers(-(2**63), 2**64 - 1), st.booleans(), st.floats(allow_nan=False)))
@example(10)
@example(11)
@example(2**31 - 1)
@example(2**31)
@example(True)
@example(3.0)
def test_classification_is_parsed_exactly_and_checked_by_the_service(k: Any) -> None:
    """The codec passes an integer k from 0 to 2**31 - 1 on as sent (0: no classification) and
    refuses any other value; its range is the service's one top-k check, as on every protocol."""
    twin = base_twins()["uint8-raw"]
    twin.outputs = [("probabilities", {"classification": k})]
    result = assert_twins_agree(twin)
    if type(k) is int and 0 <= k <= 2**31 - 1:
        assert result[0] == "ok" and result[1][0][3] == (("probabilities", k),), result
        if k:
            top = outcome(lambda: check_top_k(k, 10))
            assert (top[0] == "ok") is (k <= 10)
            if top[0] == "error":
                assert top[1] is ErrorKind.INVALID_PARAMETER
    else:
        assert result[:2] == ("error", ErrorKind.BAD_REQUEST), result


def seed_messages() -> list[bytes]:
    """Valid requests to mutate: pixels raw and typed, encoded images raw and typed."""
    photos = [png(v) for v in (3, 200)]
    return [
        pixels_request(pixels(2)).SerializeToString(),
        pixels_request(pixels(1), raw=False).SerializeToString(),
        pixels_request(pixels(1), datatype="FP32", raw=False).SerializeToString(),
        encoded_request(photos, timeout_us=10**6).SerializeToString(),
        encoded_request(photos[:1], raw=False).SerializeToString(),
    ]


SEEDS = seed_messages()


@given(st.sampled_from(range(len(SEEDS))), st.integers(0, 2**32 - 1))
def test_mutated_requests_are_requests_or_client_errors(index: int, seed: int) -> None:
    """The live server's mutation fuzz (test_bad_requests.py) at the codec alone: a mutant costs
    microseconds here, and a failure names its mutations (replay with ``bad_input.mutate``)."""
    mutant = mutate(SEEDS[index], SEEDS, f"{index}:{seed}")
    try:
        result = outcome(lambda: check_for_model(decode_request(mutant.data), LIMITS, MANIFEST))
    except Exception as exc:  # a server fault, or an error that is no client's
        raise AssertionError(f"{type(exc).__name__}: {exc} after {mutant.what}") from exc
    peeked = outcome(lambda: peek_request(mutant.data))
    assert result[0] != "ok" or peeked[0] == "ok", (peeked, mutant.what)
    event(f"{result[1].value if result[0] == 'error' else 'ok'}")
