"""Open Inference Protocol v2, exercised by NVIDIA's own client (tritonclient), on the real model."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from loadtests.in_process import GENEROUS_LIMITS
from model_contract.imaging import image_to_tensor
from model_contract.preprocess import PreprocessSpec
from server.settings import BatchingSettings, Settings
from tests.conftest import PHOTOS
from tests.served import TOPOLOGIES, served

MODEL = "efficientnet_lite0"
ESPRESSO = 967


@pytest.fixture(scope="module", params=TOPOLOGIES)
def base_url(request: pytest.FixtureRequest, model_repository: Path) -> Iterator[str]:
    settings = Settings(model_repository=model_repository, batching=BatchingSettings(max_batch_size=4))
    with served(settings, request.param, ready_path="/v2/health/ready") as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[triton.InferenceServerClient]:
    triton_client = triton.InferenceServerClient(url=base_url.removeprefix("http://"))
    yield triton_client
    triton_client.close()


@pytest.fixture(scope="module")
def coffee_and_cat(photo_bytes: dict[str, bytes]) -> np.ndarray:
    spec = PreprocessSpec(resize_shorter_side=256, crop_size=224)
    return np.stack([image_to_tensor(photo_bytes[name], spec, GENEROUS_LIMITS) for name in ("coffee", "chelsea")])


def test_health_server_and_model_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("no_such_model")
    server = client.get_server_metadata()
    assert server["name"] == "imgserve" and {"binary_tensor_data", "classification"} <= set(server["extensions"])
    metadata = client.get_model_metadata(MODEL)
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 224, 224, 3]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_uint8_tensors_in_json_and_binary(
    client: triton.InferenceServerClient, coffee_and_cat: np.ndarray, binary: bool
) -> None:
    images = triton.InferInput("images", list(coffee_and_cat.shape), "UINT8")
    images.set_data_from_numpy(coffee_and_cat, binary_data=binary)
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(MODEL, [images], outputs=[output], request_id="r1")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 1000) and probabilities.dtype == np.float32
    assert probabilities[0].argmax() == ESPRESSO
    assert probabilities[1].argmax() in PHOTOS["chelsea"]["top1"]  # type: ignore[operator]
    assert result.get_response()["id"] == "r1"


def test_fp32_tensors_are_pixel_values(client: triton.InferenceServerClient, coffee_and_cat: np.ndarray) -> None:
    images = triton.InferInput("images", list(coffee_and_cat.shape), "FP32")
    images.set_data_from_numpy(coffee_and_cat.astype(np.float32), binary_data=True)
    result = client.infer(MODEL, [images])
    assert result.as_numpy("probabilities")[0].argmax() == ESPRESSO


def test_encoded_images_as_bytes_with_the_classification_extension(
    client: triton.InferenceServerClient, photo_bytes: dict[str, bytes]
) -> None:
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(photo_bytes["coffee"])).convert("RGB").save(jpeg, format="JPEG", quality=90)
    encoded = np.array([jpeg.getvalue(), photo_bytes["cameraman"]], dtype=np.object_)
    images = triton.InferInput("images", [2], "BYTES")
    images.set_data_from_numpy(encoded, binary_data=True)
    output = triton.InferRequestedOutput("probabilities", binary_data=True, class_count=3)
    classes = client.infer(MODEL, [images], outputs=[output]).as_numpy("probabilities")
    assert classes.shape == (2, 3)
    score, index, label = classes[0][0].decode().split(":")
    assert (int(index), label) == (ESPRESSO, "espresso") and float(score) > 0.5
    assert int(classes[1][0].decode().split(":")[1]) in PHOTOS["cameraman"]["top1"]  # type: ignore[operator]


def test_protocol_errors_come_back_as_v2_errors(
    client: triton.InferenceServerClient, base_url: str, coffee_and_cat: np.ndarray
) -> None:
    wrong = triton.InferInput("images", [1, 8, 8, 3], "UINT8")
    wrong.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(InferenceServerException, match=r"224, 224, 3\]"):
        client.infer(MODEL, [wrong])
    with pytest.raises(InferenceServerException, match="no_such_model"):
        client.infer("no_such_model", [wrong])
    broken = httpx.post(f"{base_url}/v2/models/{MODEL}/infer", content=b"{not json")
    assert broken.status_code == 400 and "error" in broken.json()
    other_version = httpx.get(f"{base_url}/v2/models/{MODEL}/versions/7")
    assert other_version.status_code == 404 and "version 7" in other_version.json()["error"]


def test_tritonclient_and_v1_classify_agree_on_the_same_photo(
    client: triton.InferenceServerClient, base_url: str, photo_bytes: dict[str, bytes], coffee_and_cat: np.ndarray
) -> None:
    for name, tensor in (("coffee", coffee_and_cat[0]), ("chelsea", coffee_and_cat[1])):
        v1_top1 = httpx.post(
            f"{base_url}/v1/classify", content=photo_bytes[name], headers={"Content-Type": "image/png"}
        ).json()["predictions"][0]["index"]
        for binary in (False, True):
            images = triton.InferInput("images", [1, 224, 224, 3], "UINT8")
            images.set_data_from_numpy(tensor[None], binary_data=binary)
            output = triton.InferRequestedOutput("probabilities", binary_data=binary)
            assert client.infer(MODEL, [images], outputs=[output]).as_numpy("probabilities")[0].argmax() == v1_top1


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 224, 224, 3], "data": [1, 2, 3]}]}',
         {}, "values for shape"),
        (b'{"inputs": [{"name": "images", "datatype": "COMPLEX64", "shape": [1], "data": [1]}]}', {}, "datatype"),
        (b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 2], '
         b'"parameters": {"binary_data_size": 2}}]}', {"Inference-Header-Content-Length": "500"}, "larger than"),
        (b'{"inputs": []}', {}, "inputs"),
        (b'{"outputs": []}', {}, "inputs"),
        (b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 2, 2, 3]}]}', {}, "neither data"),
    ],
    ids=["shape-vs-data", "unknown-datatype", "header-past-body", "empty-inputs", "missing-inputs", "no-data"],
)  # fmt: skip
def test_malformed_v2_bodies_are_400_with_an_error(
    base_url: str, body: bytes, headers: dict[str, str], message: str
) -> None:
    response = httpx.post(f"{base_url}/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_the_timeout_parameter_shortens_the_deadline(base_url: str, coffee_and_cat: np.ndarray) -> None:
    body = {
        "parameters": {"timeout": 1},  # microseconds: past before the batcher can send it
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": [1, 224, 224, 3],
                "data": coffee_and_cat[0].ravel().tolist(),
            }
        ],
    }
    response = httpx.post(f"{base_url}/v2/models/{MODEL}/infer", json=body, timeout=60)
    # Either it expired in the queue (504), or, once the latency model has seen batches, it
    # was refused at admission as unable to make its deadline (429). It never ran.
    assert response.status_code in (429, 504)
    assert "deadline" in response.json()["error"]
