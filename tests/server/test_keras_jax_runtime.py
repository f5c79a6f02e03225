"""The keras_jax runtime serves the default model's .keras artifact through the real API,
and agrees with the TensorFlow runtime.

Tolerance: both runtimes compute in float32 from the same weights. Only the kernels' order
of summation differs (XLA against oneDNN). Measured, the largest difference over these photos
was 6.6e-7. The bound of 1e-4 leaves a 150-fold margin, and still catches any real mistake: a
wrong mean/std, a transposed kernel or a missing layer moves probabilities by 1e-2 or more.
bfloat16 keeps 8 bits of mantissa, so there only the clearly-classified photos must keep
their top-1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtests.in_process import GENEROUS_LIMITS
from loadtests.server_process import free_port, server_process
from model_contract.imaging import image_to_tensor
from model_contract.manifest import ModelManifest
from server.model_repository import latest_versions
from server.runtimes import RuntimeOptions, load_runtime
from tests.conftest import PHOTOS

pytest.importorskip("jax")

CLEAR_PHOTOS = ("coffee", "cameraman")  # top-1 probability above 0.9


def jax_server(model_repository: Path, compute_dtype: str) -> Iterator[str]:
    port = free_port()
    env = {
        "KERAS_BACKEND": "jax",
        "IMGSERVE_RUNTIME": "keras_jax",
        "IMGSERVE_COMPUTE_DTYPE": compute_dtype,
        "IMGSERVE_BATCHING__MAX_BATCH_SIZE": "4",
        "IMGSERVE_BATCHING__ALLOWED_BATCH_SIZES": "[1,4]",
    }
    command = [sys.executable, "-m", "imgserve", "serve", "--port", str(port)]
    command += ["--model-repository", str(model_repository)]
    with server_process(command, port, env, startup_s=240) as (base_url, _):
        yield base_url


@pytest.fixture(scope="module")
def float32_server(model_repository: Path) -> Iterator[str]:
    yield from jax_server(model_repository, "float32")


@pytest.fixture(scope="module")
def bfloat16_server(model_repository: Path) -> Iterator[str]:
    yield from jax_server(model_repository, "bfloat16")


@pytest.fixture(scope="module")
def tensorflow_probabilities(model_repository: Path, photo_bytes: dict[str, bytes]) -> dict[str, np.ndarray]:
    (version,) = [v for v in latest_versions(model_repository) if v.manifest.name == "efficientnet_lite0"]
    manifest: ModelManifest = version.manifest
    runtime = load_runtime(manifest, version.path, RuntimeOptions())
    spec = manifest.preprocessing
    batch = np.stack([image_to_tensor(photo_bytes[name], spec, GENEROUS_LIMITS) for name in PHOTOS])
    return dict(zip(PHOTOS, runtime.predict(batch), strict=True))


def classify(base_url: str, data: bytes) -> list[dict[str, float]]:
    response = httpx.post(f"{base_url}/v1/classify?top_k=5", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    predictions: list[dict[str, float]] = response.json()["predictions"]
    return predictions


def test_the_jax_runtime_is_the_one_serving(float32_server: str) -> None:
    (model,) = httpx.get(f"{float32_server}/v1/models").json()["models"]
    assert model["runtime"] == "keras_jax"


@pytest.mark.parametrize("photo", list(PHOTOS))
def test_float32_predictions_match_tensorflow(
    float32_server: str, photo_bytes: dict[str, bytes], tensorflow_probabilities: dict[str, np.ndarray], photo: str
) -> None:
    predictions = classify(float32_server, photo_bytes[photo])
    expected = tensorflow_probabilities[photo]
    assert predictions[0]["index"] == int(np.argmax(expected))
    for p in predictions:
        assert abs(p["score"] - float(expected[int(p["index"])])) < 1e-4


@pytest.mark.parametrize("photo", CLEAR_PHOTOS)
def test_bfloat16_keeps_clear_top1(
    bfloat16_server: str, photo_bytes: dict[str, bytes], tensorflow_probabilities: dict[str, np.ndarray], photo: str
) -> None:
    predictions = classify(bfloat16_server, photo_bytes[photo])
    assert predictions[0]["index"] == int(np.argmax(tensorflow_probabilities[photo]))
    assert abs(predictions[0]["score"] - float(tensorflow_probabilities[photo].max())) < 0.05
