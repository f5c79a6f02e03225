"""TensorFlow Serving's REST API, as its clients call it, on the real model."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtests.in_process import GENEROUS_LIMITS
from model_contract.imaging import image_to_tensor
from model_contract.preprocess import PreprocessSpec
from server.settings import BatchingSettings, Settings
from tests.conftest import PHOTOS
from tests.served import TOPOLOGIES, served

MODEL = "efficientnet_lite0"
ESPRESSO = 967


@pytest.fixture(scope="module", params=TOPOLOGIES)
def client(request: pytest.FixtureRequest, model_repository: Path) -> Iterator[httpx.Client]:
    settings = Settings(model_repository=model_repository, batching=BatchingSettings(max_batch_size=4))
    with served(settings, request.param) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def test_predict_row_form_with_b64_images(client: httpx.Client, photo_bytes: dict[str, bytes]) -> None:
    body = {"instances": [b64(photo_bytes["coffee"]), {"images": b64(photo_bytes["chelsea"])}]}
    response = client.post(f"/v1/models/{MODEL}:predict", json=body)
    assert response.status_code == 200, response.text
    predictions = np.array(response.json()["predictions"])
    assert predictions.shape == (2, 1000)
    assert predictions[0].argmax() == ESPRESSO
    assert predictions[1].argmax() in PHOTOS["chelsea"]["top1"]  # type: ignore[operator]


def test_predict_columnar_form_with_pixel_tensors(client: httpx.Client, photo_bytes: dict[str, bytes]) -> None:
    pixels = image_to_tensor(
        photo_bytes["coffee"], PreprocessSpec(resize_shorter_side=256, crop_size=224), GENEROUS_LIMITS
    )
    body = {"inputs": {"images": [pixels.tolist()]}}
    response = client.post(f"/v1/models/{MODEL}/versions/1:predict", json=body)
    assert response.status_code == 200, response.text
    assert np.array(response.json()["outputs"]).argmax(axis=1).tolist() == [ESPRESSO]


def test_classify_answers_label_score_pairs(client: httpx.Client, photo_bytes: dict[str, bytes]) -> None:
    body = {"examples": [{"images": b64(photo_bytes["coffee"])}], "top_k": 3}
    (result,) = client.post(f"/v1/models/{MODEL}:classify", json=body).json()["results"]
    assert len(result) == 3
    assert result[0][0] == "espresso" and result[0][1] > 0.5
    assert [score for _, score in result] == sorted((score for _, score in result), reverse=True)


def test_version_status_and_metadata(client: httpx.Client) -> None:
    (status,) = client.get(f"/v1/models/{MODEL}").json()["model_version_status"]
    assert status == {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert client.get(f"/v1/models/{MODEL}/versions/1").status_code == 200
    signature = client.get(f"/v1/models/{MODEL}/metadata").json()["metadata"]["signature_def"]["signature_def"]
    inputs = signature["serving_default"]["inputs"]["images"]
    assert inputs["dtype"] == "DT_UINT8"
    assert [d["size"] for d in inputs["tensor_shape"]["dim"]] == ["-1", "224", "224", "3"]


def test_errors_are_tf_serving_shaped(client: httpx.Client, photo_bytes: dict[str, bytes]) -> None:
    missing = client.get(f"/v1/models/{MODEL}/versions/9")
    assert missing.status_code == 404 and "version 9" in missing.json()["error"]
    assert client.post(f"/v1/models/{MODEL}/labels/canary:predict", json={"instances": [{}]}).status_code == 404
    bad = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [{"b64": "%%%"}]})
    assert bad.status_code == 400 and "base64" in bad.json()["error"]
    not_image = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [b64(b"plain text")]})
    assert not_image.status_code == 400 and "error" in not_image.json()
    # The project's own routes next to TF Serving's are unchanged.
    assert client.get("/v1/models").json()["default"] == MODEL


def test_predict_answers_the_whole_output_whatever_top_k_says(
    client: httpx.Client, photo_bytes: dict[str, bytes]
) -> None:
    """top_k belongs to :classify; :predict neither ranks nor refuses an integer one."""
    for top_k in (3, 0):
        body = {"instances": [b64(photo_bytes["coffee"])], "top_k": top_k}
        response = client.post("/v1/models/efficientnet_lite0:predict", json=body)
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"][0]) == 1000
