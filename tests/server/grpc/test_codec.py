"""The gRPC codec as a unit: typed and raw tensors parse to the same request, answers come back
the way the request came, and the large-message policy reads the wire correctly."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from model_contract.errors import ErrorKind, ServiceError
from server.grpc_api import inference_pb2 as pb
from server.grpc_api.codec import decode_request, encode_infer_response, parse_infer
from server.grpc_api.servicer import call_timeout_s
from server.grpc_api.wire import MOST_FIELDS, MOST_PARSED_HERE, peek_request
from server.top_k import Prediction
from server.v2_codec import RequestedOutput, TensorLimits, pack_bytes_elements

LIMITS = TensorLimits.for_images(4, (2, 2, 3))
PIXELS = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)


def request(typed: bool, datatype: str = "UINT8", values: np.ndarray = PIXELS) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", id="r1")
    tensor = message.inputs.add(name="images", datatype=datatype, shape=list(values.shape))
    if typed:
        tensor.contents.uint_contents.extend(values.ravel().tolist())
    else:
        message.raw_input_contents.append(values.tobytes())
    return message


def test_typed_and_raw_tensors_parse_alike() -> None:
    raw, typed = parse_infer(request(typed=False), LIMITS), parse_infer(request(typed=True), LIMITS)
    for parsed in (raw, typed):
        (tensor,) = parsed.inputs
        assert tensor.array is not None and tensor.array.dtype == np.uint8
        np.testing.assert_array_equal(tensor.array, PIXELS)
    assert raw.id == typed.id == "r1"


def test_bytes_elements_raw_and_typed() -> None:
    images = [b"\xff\xd8one", b"two"]
    raw = pb.ModelInferRequest(model_name="m", raw_input_contents=[pack_bytes_elements(images)])
    raw.inputs.add(name="images", datatype="BYTES", shape=[2])
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="images", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(images)
    assert parse_infer(raw, LIMITS).inputs[0].elements == parse_infer(typed, LIMITS).inputs[0].elements == images


@pytest.mark.parametrize(
    ("mutate", "kind", "message"),
    [
        (lambda m: m.inputs[0].contents.uint_contents.__setitem__(0, 256), ErrorKind.BAD_REQUEST, "outside the range"),
        (lambda m: m.inputs[0].contents.int_contents.append(1), ErrorKind.BAD_REQUEST, "goes in contents.uint"),
        (lambda m: m.inputs[0].contents.uint_contents.append(1), ErrorKind.BAD_REQUEST, "25 values for shape"),
        (lambda m: m.inputs[0].shape.__setitem__(0, 5), ErrorKind.TOO_MANY_IMAGES, "at most 4"),
        (lambda m: m.inputs[0].shape.__setitem__(1, -1), ErrorKind.BAD_REQUEST, "each dimension"),
        (lambda m: m.raw_input_contents.append(b"x"), ErrorKind.BAD_REQUEST, "in both contents and raw_input"),
    ],
    ids=["uint8-over-255", "wrong-typed-field", "one-value-too-many", "too-many-images", "negative-dim", "both"],
)
def test_typed_contents_are_checked_before_they_are_trusted(
    mutate: Callable[[pb.ModelInferRequest], object], kind: ErrorKind, message: str
) -> None:
    bad = request(typed=True)
    mutate(bad)
    with pytest.raises(ServiceError) as refused:
        parse_infer(bad, LIMITS)
    assert refused.value.kind is kind and message in refused.value.message


@pytest.mark.parametrize("value", [0, -5, float("nan"), "soon", True])
def test_the_timeout_parameter_must_be_positive_microseconds(value: object) -> None:
    bad = request(typed=False)
    parameter = bad.parameters["timeout"]
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, str):
        parameter.string_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.int64_param = value  # type: ignore[assignment]
    with pytest.raises(ServiceError, match="timeout must be a positive number"):
        parse_infer(bad, LIMITS)


def test_a_message_that_is_not_a_request_is_a_protocol_error() -> None:
    with pytest.raises(ServiceError, match="not a ModelInferRequest"):
        decode_request(b"\xff\xff\xff\xff")


def test_answers_come_back_raw_or_typed_as_the_request_came() -> None:
    probabilities = np.array([[0.25, 0.75]], dtype=np.float32)
    classes = [[Prediction(label="b", index=1, score=0.75), Prediction(label="a", index=0, score=0.25)]]
    asked = [RequestedOutput("probabilities", binary=True), RequestedOutput("probabilities", True, classification=1)]
    for raw in (True, False):
        encoded = encode_infer_response("m", 3, "r1", "probabilities", probabilities, asked, classes, "float32", raw)
        response = pb.ModelInferResponse.FromString(encoded)
        assert (response.model_name, response.model_version, response.id) == ("m", "3", "r1")
        scores, top = response.outputs
        assert (scores.datatype, list(scores.shape), top.datatype, list(top.shape)) == ("FP32", [1, 2], "BYTES", [1, 1])
        if raw:
            assert len(response.raw_output_contents) == 2 and not scores.HasField("contents")
            np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.float32), [0.25, 0.75])
            assert response.raw_output_contents[1] == pack_bytes_elements([b"0.750000:1:b"])
        else:
            assert not response.raw_output_contents
            assert list(scores.contents.fp32_contents) == [0.25, 0.75]
            assert list(top.contents.bytes_contents) == [b"0.750000:1:b"]


def test_fp16_outputs_are_always_raw() -> None:
    """FP16 has no typed field in the protocol."""
    probabilities = np.array([[0.5]], dtype=np.float16)
    encoded = encode_infer_response("m", 1, None, "p", probabilities, [], [], "float16", raw=False)
    response = pb.ModelInferResponse.FromString(encoded)
    assert response.outputs[0].datatype == "FP16" and len(response.raw_output_contents) == 1


def test_peek_finds_the_model_and_the_raw_bytes_without_parsing() -> None:
    raw = request(typed=False)
    raw.model_version = "3"
    for i in range(8):  # parameters and outputs before the raw contents on the wire
        raw.parameters[f"p{i}"].int64_param = i
        raw.outputs.add(name=f"o{i}")
    message = raw.SerializeToString()
    peek = peek_request(message)
    assert (peek.model_name, peek.model_version, peek.raw_bytes) == ("m", "3", PIXELS.nbytes)
    assert peek.parses_fast(len(message))
    typed = request(typed=True).SerializeToString()
    assert peek_request(typed).raw_bytes == 0


def test_a_large_message_of_typed_numbers_is_not_parsed_on_the_event_loop() -> None:
    typed = request(typed=True, values=np.full((8, 64, 64, 3), 200, np.uint8))
    typed.raw_input_contents.append(b"tiny")  # a raw field beside them does not make it fast
    message = typed.SerializeToString()
    assert len(message) > MOST_PARSED_HERE and not peek_request(message).parses_fast(len(message))


@pytest.mark.parametrize(
    "message",
    [
        b"\x80",  # a key that never ends
        b"\x0a\x05ab",  # a name longer than the message
        b"\x0b",  # a group: no field of this message is one
        b"\x0a\x02\xff\xfe",  # a name that is not UTF-8
        b"\x1a\x00" * (MOST_FIELDS + 1),  # more top-level fields than any request has
    ],
    ids=["truncated-key", "past-the-end", "group", "not-utf8", "too-many-fields"],
)
def test_peek_refuses_what_is_no_request(message: bytes) -> None:
    with pytest.raises(ServiceError, match=r"ModelInferRequest|top-level fields"):
        peek_request(message)


class _Deadline:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(
    ("timeout_us", "remaining", "expected"),
    [(None, None, None), (None, 0.25, 0.25), (100.0, 5.0, 0.0001), (2e6, 0.5, 0.5)],
    ids=["neither", "call-deadline", "parameter-sooner", "call-deadline-sooner"],
)
def test_the_sooner_of_the_timeout_parameter_and_the_calls_deadline_is_the_requests(
    timeout_us: float | None, remaining: float | None, expected: float | None
) -> None:
    assert call_timeout_s(timeout_us, _Deadline(remaining)) == expected  # type: ignore[arg-type]


def test_a_call_that_arrives_past_its_deadline_is_refused() -> None:
    with pytest.raises(ServiceError) as late:
        call_timeout_s(None, _Deadline(0.0))  # type: ignore[arg-type]
    assert late.value.kind is ErrorKind.TIMEOUT
