"""Hostile requests against the real model over real HTTP: each is refused as a client error,
cheaply, without freezing the event loop or disturbing the requests around it."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image

from server.settings import BatchingSettings, Settings
from tests.conftest import PHOTOS
from tests.served import TOPOLOGIES, served

MODEL = "efficientnet_lite0"


@pytest.fixture(scope="module", params=TOPOLOGIES)
def base_url(request: pytest.FixtureRequest, model_repository: Path) -> Iterator[str]:
    settings = Settings(model_repository=model_repository, batching=BatchingSettings(max_batch_size=4))
    with served(settings, request.param) as url:
        yield url


def hostile_bodies() -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(what, path, body, headers), each built before the clock starts."""
    infer, predict = f"/v2/models/{MODEL}/infer", f"/v1/models/{MODEL}:predict"
    json_header = {"Content-Type": "application/json"}
    # 18 KB of huge numbers as dimensions: once quadratic big-int arithmetic on the loop.
    huge_dims = (
        b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[' + b",".join([b"1e308"] * 3000) + b'],"data":[]}]}'
    )
    overflowing = orjson.dumps(
        {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [64, 2**31 - 1, 2**31 - 1, 3], "data": []}]}
    )
    # 19 MB of JSON pixels, the largest body allowed, with one value out of range at the very
    # end: every number must be parsed and converted before the request can be refused.
    pixels = [7] * (64 * 224 * 224 * 3)
    pixels[-1] = 300
    full = orjson.dumps(
        {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [64, 224, 224, 3], "data": pixels}]}
    )
    # TF Serving: 60 well-formed pixel images and one ragged one.
    image = np.zeros((224, 224, 3), np.uint8).tolist()
    ragged = orjson.dumps({"instances": [image] * 60 + [[[0, 0, 0]] * 224]})
    return [
        ("huge dims", infer, huge_dims, json_header),
        ("overflowing shape", infer, overflowing, json_header),
        ("19 MB of JSON pixels", infer, full, json_header),
        ("ragged TF pixels", predict, ragged, json_header),
    ]


def test_hostile_bodies_are_client_errors_and_health_answers_throughout(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    bodies = hostile_bodies()
    answers: list[tuple[str, int]] = []
    health_seconds: list[float] = []

    def send(item: tuple[str, str, bytes, dict[str, str]]) -> None:
        what, path, body, headers = item
        response = httpx.post(base_url + path, content=body, headers=headers, timeout=120)
        answers.append((what, response.status_code))

    with ThreadPoolExecutor(max_workers=4) as pool, httpx.Client(base_url=base_url, timeout=30) as health:
        futures = [pool.submit(send, item) for item in bodies * 2]
        for _ in range(600):  # bounded: at most ~60 s of polling
            started = time.perf_counter()
            assert health.get("/health").status_code == 200
            health_seconds.append(time.perf_counter() - started)
            if all(f.done() for f in futures):
                break
            time.sleep(0.1)
        for future in futures:
            future.result()
    assert len(answers) == 2 * len(bodies)
    assert all(400 <= status < 500 for _, status in answers), answers
    # Before, the 18 KB body alone stalled /health for 2.6 s and the 19 MB one for seconds.
    assert max(health_seconds) < 2.0, sorted(health_seconds)[-5:]
    # Client errors are not the server's: at most one line each, never a traceback.
    assert not [r for r in caplog.records if r.exc_info or "\n" in r.getMessage()]


def test_error_bodies_do_not_echo_what_the_client_sent(base_url: str) -> None:
    long_name = "x" * 20_000
    responses = [
        httpx.post(f"{base_url}/v2/models/{MODEL}/infer", json={"inputs": [{"name": long_name, "datatype": "UINT8",
                   "shape": [1, 224, 224, 3], "data": [0] * (224 * 224 * 3)}]}),
        httpx.post(f"{base_url}/v1/models/{MODEL}:predict", json={long_name: 1, "instances": []}),
        httpx.get(f"{base_url}/v2/models/{'m' * 7000}"),
        httpx.post(f"{base_url}/v1/classify?top_k={'9' * 5000}", content=b"x", headers={"Content-Type": "image/png"}),
    ]  # fmt: skip
    for response in responses:
        assert 400 <= response.status_code < 500
        assert len(response.content) < 1000, response.text[:200]


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def test_a_batch_with_broken_files_of_every_format_is_answered_per_image(
    base_url: str, photo_bytes: dict[str, bytes]
) -> None:
    photo = Image.open(io.BytesIO(photo_bytes["chelsea"])).convert("RGB")
    broken = {
        "truncated.jpg": encode(photo, "JPEG")[:3000],
        "flipped.png": bytearray(encode(photo, "PNG")),
        "truncated.webp": encode(photo, "WEBP")[:2000],
        "truncated.tiff": encode(photo, "TIFF")[:5000],
        "truncated.bmp": encode(photo, "BMP")[:5000],
        "truncated.gif": encode(photo, "GIF")[:3000],
    }
    broken["flipped.png"][200:260] = b"\xff" * 60  # corrupt the compressed data
    files = [("files", ("cat.png", photo_bytes["chelsea"], "image/png"))]
    files += [("files", (name, bytes(data), "application/octet-stream")) for name, data in broken.items()]
    files += [("files", ("coffee.png", photo_bytes["coffee"], "image/png"))]
    response = httpx.post(f"{base_url}/v1/classify/batch", files=files, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["predictions"][0]["index"] in PHOTOS["chelsea"]["top1"]
    assert results[-1]["predictions"][0]["index"] in PHOTOS["coffee"]["top1"]
    for name, result in zip(broken, results[1:-1], strict=True):
        assert result["error"]["code"] == "invalid_image", (name, result)
