"""The TF Serving request codec on its own: the forms its clients send, and what it refuses."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
import pytest

from model_contract.errors import ErrorKind, ServiceError
from server.tfserving_codec import ModelInput, TFServingRequest, parse_request

MODEL = ModelInput("images", (2, 2, 3), "serving_default")


def parse(body: dict[str, Any], max_images: int = 4) -> TFServingRequest:
    return parse_request(orjson.dumps(body), MODEL, max_images=max_images)


def refusal(body: Any, max_images: int = 4) -> ServiceError:
    with pytest.raises(ServiceError) as refused:
        parse_request(body if isinstance(body, bytes) else orjson.dumps(body), MODEL, max_images=max_images)
    return refused.value


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def pixels(value: float) -> list[Any]:
    return np.full((2, 2, 3), value).tolist()


def test_row_form_with_encoded_images_bare_or_under_the_input_name() -> None:
    parsed = parse({"instances": [b64(b"first"), {"images": b64(b"second")}]})
    assert parsed.images == [b"first", b"second"]
    assert not parsed.columnar and parsed.top_k is None


def test_columnar_form_with_pixels_answers_in_columns() -> None:
    parsed = parse({"inputs": {"images": [pixels(0), pixels(255)]}})
    assert isinstance(parsed.images, np.ndarray) and parsed.images.dtype == np.uint8
    assert parsed.images.shape == (2, 2, 2, 3) and parsed.images[1].min() == 255
    assert parsed.columnar
    assert parse({"inputs": [pixels(1)]}).columnar  # a bare list is columnar too


def test_pixel_values_are_rounded_to_the_nearest_level() -> None:
    parsed = parse({"instances": [pixels(7.6)]})
    assert isinstance(parsed.images, np.ndarray) and int(parsed.images[0, 0, 0, 0]) == 8


def test_classify_examples_carry_a_top_k_whose_range_is_left_to_the_service() -> None:
    assert parse({"examples": [b64(b"x")], "top_k": 3}).top_k == 3
    # The one range check (limits.max_top_k) is the service's, as for every protocol.
    assert parse({"examples": [b64(b"x")], "top_k": 10_000}).top_k == 10_000
    for not_an_integer in ("3", 2.5, True, [3]):
        assert refusal({"examples": [b64(b"x")], "top_k": not_an_integer}).kind is ErrorKind.INVALID_PARAMETER


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not valid JSON"),
        ([1, 2], "JSON object"),
        ({"instances": [b64(b"x")], "inputs": [b64(b"x")]}, "exactly one of"),
        ({}, "exactly one of"),
        ({"instances": []}, "non-empty list"),
        ({"instances": [b64(b"x")], "surprise": 1}, "unknown field 'surprise'"),
        ({"instances": [b64(b"x")], "signature_name": "other"}, "unknown signature_name 'other'"),
        ({"inputs": {"pixels": [pixels(0)]}}, "this model's one input, 'images'"),
        ({"instances": [{"b64": "%%%"}]}, "not valid base64"),
        ({"instances": [{"b64": "eA==", "extra": 1}]}, '{"b64": "<base64>"}'),
        ({"instances": [{"images": b64(b"x"), "other": 1}]}, "only this model's one input"),
        ({"instances": [pixels(256)]}, "from 0 to 255"),
        ({"instances": [np.zeros((2, 3, 3)).tolist()]}, "must be 2x2x3"),
        ({"instances": [b64(b"x"), pixels(0)]}, "not both"),
        ({"instances": [7]}, "an image is"),
    ],
)
def test_malformed_requests_are_400_and_say_why(body: Any, says: str) -> None:
    error = refusal(body)
    assert error.kind is ErrorKind.BAD_REQUEST
    assert says in error.message


def test_more_images_than_allowed_is_413_before_any_is_decoded() -> None:
    error = refusal({"instances": [b64(b"x")] * 5}, max_images=4)
    assert error.kind is ErrorKind.TOO_MANY_IMAGES and "5 images" in error.message
