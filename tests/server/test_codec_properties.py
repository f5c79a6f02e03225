"""Property tests of the two request codecs (v2 and TF Serving): whatever the bytes, the codec
returns a request within its limits or raises a client error (4xx). Nothing else escapes,
and nothing is converted before the declared sizes are checked. A codec only parses the top-k
a client asks for, as the integer it sent; its range is the service's one check (check_top_k)."""

from __future__ import annotations

import base64
import math
from typing import Any, Callable

import numpy as np
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from model_contract.errors import ErrorKind, ServiceError
from server.api.error_handlers import HTTP_STATUS
from server.tfserving_codec import ModelInput, parse_request
from server.top_k import check_top_k
from server.v2_codec import ProtocolError, TensorLimits, model_images, parse_header_length, parse_infer_request

ITEM_SHAPE = (8, 8, 3)
MAX_IMAGES = 4
LIMITS = TensorLimits(
    max_batch=MAX_IMAGES,
    max_elements=MAX_IMAGES * math.prod(ITEM_SHAPE),
    max_byte_elements=MAX_IMAGES,
)
MAX_TOP_K = 10
TF_MODEL = ModelInput("images", ITEM_SHAPE, "serving_default")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)
# Values an attacker reaches for: huge and negative numbers, numbers in strings, wrong types.
hostile_values = json_values | st.sampled_from(
    [1e308, -1, 2**31, 2**63 - 1, 2**64 - 1, "nan", "1e308", "inf", [1e308] * 8, [2**31 - 1] * 8, [], {}, True, 0.5]
)


def client_error_or_result(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ServiceError as exc:
        assert 400 <= HTTP_STATUS[exc.kind] < 500, f"{HTTP_STATUS[exc.kind]}: {exc.message}"
        assert len(exc.message) <= 400
        return None


def assert_top_k_checked(k: int) -> None:
    """The service's one top-k check, which every protocol's parsed top-k goes through, admits
    ``k`` from 1 to MAX_TOP_K and refuses any other as an invalid parameter (a 4xx)."""
    if 1 <= k <= MAX_TOP_K:
        check_top_k(k, MAX_TOP_K)
        return
    with pytest.raises(ServiceError) as refused:
        check_top_k(k, MAX_TOP_K)
    assert refused.value.kind is ErrorKind.INVALID_PARAMETER and 400 <= HTTP_STATUS[refused.value.kind] < 500


def valid_v2_request() -> dict[str, Any]:
    return {
        "id": "r1",
        "parameters": {"timeout": 1000, "binary_data_output": False},
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": [1, *ITEM_SHAPE], "data": [7] * math.prod(ITEM_SHAPE)}
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 3, "binary_data": False}}],
    }


V2_FIELDS: list[tuple[Any, ...]] = [
    ("id",),
    ("parameters",),
    ("parameters", "timeout"),
    ("parameters", "binary_data_output"),
    ("inputs",),
    ("inputs", 0),
    ("inputs", 0, "name"),
    ("inputs", 0, "datatype"),
    ("inputs", 0, "shape"),
    ("inputs", 0, "shape", 0),
    ("inputs", 0, "data"),
    ("inputs", 0, "parameters"),
    ("inputs", 0, "parameters", "binary_data_size"),
    ("outputs",),
    ("outputs", 0),
    ("outputs", 0, "name"),
    ("outputs", 0, "parameters"),
    ("outputs", 0, "parameters", "classification"),
    ("outputs", 0, "parameters", "binary_data"),
]


def replaced(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    document = orjson.loads(orjson.dumps(document))  # a deep copy
    target: Any = document
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target, dict) else target[key]
    target[path[-1]] = value
    return document


@given(st.binary(max_size=3000))
def test_v2_any_bytes_is_a_request_or_a_client_error(body: bytes) -> None:
    client_error_or_result(lambda: parse_infer_request(body, None, LIMITS))


@given(json_values)
def test_v2_any_json_is_a_request_or_a_client_error(value: Any) -> None:
    client_error_or_result(lambda: parse_infer_request(orjson.dumps(value), None, LIMITS))


@given(st.sampled_from(V2_FIELDS), hostile_values)
@example(("outputs", 0, "parameters", "classification"), MAX_TOP_K)
@example(("outputs", 0, "parameters", "classification"), MAX_TOP_K + 1)
@example(("outputs", 0, "parameters", "classification"), 2**31 - 1)
@example(("outputs", 0, "parameters", "classification"), True)
@example(("outputs", 0, "parameters", "classification"), 3.0)
def test_v2_one_hostile_field_is_a_client_error_or_still_within_limits(path: tuple[Any, ...], value: Any) -> None:
    document = replaced(valid_v2_request(), path, value)
    body = orjson.dumps(document)
    parsed = client_error_or_result(lambda: parse_infer_request(body, None, LIMITS))
    if parsed is None:
        return
    (tensor,) = parsed.inputs
    elements = len(tensor.elements) if tensor.datatype == "BYTES" else tensor.array.size
    assert elements <= LIMITS.max_elements
    assert parsed.timeout_us is None or (math.isfinite(parsed.timeout_us) and parsed.timeout_us > 0)
    for sent, output in zip(document.get("outputs") or [], parsed.outputs, strict=True):
        asked = (sent.get("parameters") or {}).get("classification", 0)  # 0: no classification
        assert type(asked) is int and type(output.classification) is int and output.classification == asked
        if output.classification:
            assert_top_k_checked(output.classification)
    images = client_error_or_result(lambda: model_images(parsed, "images", ITEM_SHAPE))
    if isinstance(images, np.ndarray):
        assert images.dtype == np.uint8 and images.shape[1:] == ITEM_SHAPE and len(images) <= MAX_IMAGES


@given(
    st.integers(min_value=1, max_value=MAX_IMAGES),
    st.sampled_from(["UINT8", "FP32"]),
    st.booleans(),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_v2_valid_tensors_round_trip_as_json_and_binary(count: int, datatype: str, binary: bool, seed: int) -> None:
    dtype = np.uint8 if datatype == "UINT8" else np.float32
    pixels = np.random.default_rng(seed).integers(0, 256, size=(count, *ITEM_SHAPE)).astype(dtype)
    spec: dict[str, Any] = {"name": "images", "datatype": datatype, "shape": list(pixels.shape)}
    if binary:
        spec["parameters"] = {"binary_data_size": pixels.nbytes}
        header = orjson.dumps({"inputs": [spec]})
        parsed = parse_infer_request(header + pixels.tobytes(), len(header), LIMITS)
    else:
        spec["data"] = pixels.tolist()
        parsed = parse_infer_request(orjson.dumps({"inputs": [spec]}), None, LIMITS)
    assert np.array_equal(model_images(parsed, "images", ITEM_SHAPE), pixels.astype(np.uint8))


@given(st.lists(st.binary(max_size=40), min_size=0, max_size=MAX_IMAGES + 2), st.binary(max_size=8))
def test_v2_binary_bytes_elements_split_exactly_or_fail_as_client_errors(elements: list[bytes], tail: bytes) -> None:
    raw = b"".join(len(e).to_bytes(4, "little") + e for e in elements) + tail
    header = orjson.dumps(
        {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(elements)],
                     "parameters": {"binary_data_size": len(raw)}}]}
    )  # fmt: skip
    parsed = client_error_or_result(lambda: parse_infer_request(header + raw, len(header), LIMITS))
    if parsed is not None:
        assert not tail and len(elements) <= MAX_IMAGES and parsed.inputs[0].elements == elements


def test_v2_a_huge_declared_shape_is_refused_before_any_arithmetic_on_it() -> None:
    """A shape of eight 2**31-1 dims was once a 250-digit product computed on the event loop."""
    body = orjson.dumps(
        {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1] + [2**31 - 1] * 7, "data": []}]}
    )
    try:
        parse_infer_request(body, None, LIMITS)
    except ServiceError as exc:
        assert HTTP_STATUS[exc.kind] == 413 and "more than" in exc.message
    else:
        raise AssertionError("accepted")


@given(st.text(max_size=25), st.integers(min_value=0, max_value=100))
def test_the_binary_header_length_is_digits_within_the_body(value: str, body_length: int) -> None:
    length = client_error_or_result(lambda: parse_header_length(value, body_length))
    assert length is None or (value.isdigit() and 0 <= length <= body_length)


def valid_tf_request() -> dict[str, Any]:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    return {"signature_name": "serving_default", "instances": [{"b64": png}, {"images": {"b64": png}}], "top_k": 3}


TF_FIELDS: list[tuple[Any, ...]] = [
    ("signature_name",),
    ("instances",),
    ("instances", 0),
    ("instances", 0, "b64"),
    ("instances", 1),
    ("instances", 1, "images"),
    ("top_k",),
    ("context",),
    ("inputs",),
    ("examples",),
]


@given(st.binary(max_size=3000))
def test_tf_any_bytes_is_a_request_or_a_client_error(body: bytes) -> None:
    client_error_or_result(lambda: parse_request(body, TF_MODEL, max_images=MAX_IMAGES))


@given(st.sampled_from(TF_FIELDS), hostile_values)
@example(("top_k",), MAX_TOP_K)
@example(("top_k",), MAX_TOP_K + 1)
@example(("top_k",), 0)
@example(("top_k",), -1)
@example(("top_k",), None)
@example(("top_k",), True)
@example(("top_k",), 3.0)
def test_tf_one_hostile_field_is_a_client_error_or_still_within_limits(path: tuple[Any, ...], value: Any) -> None:
    document = replaced(valid_tf_request(), path, value)
    body = orjson.dumps(document)
    parsed = client_error_or_result(lambda: parse_request(body, TF_MODEL, max_images=MAX_IMAGES))
    if parsed is None:
        return
    assert 1 <= len(parsed.images) <= MAX_IMAGES
    sent = document.get("top_k")
    if parsed.top_k is None:
        assert sent is None
    else:
        assert type(sent) is int and type(parsed.top_k) is int and parsed.top_k == sent
        assert_top_k_checked(parsed.top_k)
    if isinstance(parsed.images, np.ndarray):
        assert parsed.images.dtype == np.uint8 and parsed.images.shape[1:] == ITEM_SHAPE


@given(
    st.lists(
        st.lists(st.lists(st.lists(st.floats(-1e6, 1e6) | st.integers(-1000, 1000), min_size=3, max_size=3),
                          min_size=8, max_size=8), min_size=8, max_size=8),
        min_size=1, max_size=MAX_IMAGES + 1,
    )
)  # fmt: skip
def test_tf_pixel_lists_are_converted_only_when_every_value_is_a_pixel(images: list[Any]) -> None:
    body = orjson.dumps({"instances": images})
    parsed = client_error_or_result(lambda: parse_request(body, TF_MODEL, max_images=MAX_IMAGES))
    values = np.asarray(images, dtype=np.float64)
    if len(images) <= MAX_IMAGES and values.min() >= 0 and values.max() <= 255:
        assert parsed is not None and np.array_equal(parsed.images, np.rint(values).astype(np.uint8))
    else:
        assert parsed is None


def test_v2_rows_are_counted_before_any_row_is_converted() -> None:
    """Five million one-number rows once cost a parse 2.3 GB and 8.6 s before the refusal."""
    rows = orjson.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [2, 8, 8, 3],
                                     "data": [[0]] * 100_000}]})  # fmt: skip
    with pytest.raises(ProtocolError, match="100000 rows for shape"):
        parse_infer_request(rows, None, LIMITS)
    flat = orjson.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [2, 8, 8, 3], "data": [0] * 7}]})
    with pytest.raises(ProtocolError, match="7 values for shape"):
        parse_infer_request(flat, None, LIMITS)


@pytest.mark.parametrize(
    ("datatype", "value", "accepted"),
    [
        ("INT64", 2**63 - 1, True),
        ("INT64", 9.223372036854776e18, False),  # 2**63 as a float: float(2**63 - 1) rounds up to it
        ("INT64", -(2**63), True),
        ("UINT64", 2**64 - 1, True),
        ("UINT64", 1.8446744073709552e19, False),
        ("UINT8", 255.0, True),
        ("UINT8", 256.0, False),
        ("UINT8", -1, False),
        ("FP16", 65504.0, True),
        ("FP16", 65536.0, False),
    ],
)
def test_v2_numbers_fit_their_datatype_exactly_at_its_bounds(datatype: str, value: float, accepted: bool) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [1], "data": [value]}]})
    parsed = client_error_or_result(lambda: parse_infer_request(body, None, LIMITS))
    assert (parsed is not None) is accepted
    if parsed is not None:
        assert parsed.inputs[0].array.tolist() == [value]
