"""The HTTP API end to end on the real EfficientNet-Lite0 model, in process."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from httpx import Client
from PIL import Image

from server.settings import BatchingSettings, LimitSettings, Settings
from tests.conftest import PHOTOS
from tests.served import TOPOLOGIES, served

CAT_CLASSES = PHOTOS["chelsea"]["top1"]
MAX_BODY = 2_000_000


@pytest.fixture(scope="module", params=TOPOLOGIES)
def client(request: pytest.FixtureRequest, model_repository: Path) -> Iterator[Client]:
    settings = Settings(
        model_repository=model_repository,
        batching=BatchingSettings(max_batch_size=4),
        limits=LimitSettings(max_body_bytes=MAX_BODY, max_image_pixels=20_000_000, max_images_per_request=8),
    )
    with served(settings, request.param) as base_url, Client(base_url=base_url, timeout=60) as test_client:
        yield test_client


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    from tests.conftest import photo_path

    return Image.open(photo_path(PHOTOS["chelsea"]["file"])).convert("RGB")  # type: ignore[arg-type]


def assert_error(response: object, status: int, code: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"].startswith("application/json")  # type: ignore[attr-defined]
    assert response.json()["error"]["code"] == code  # type: ignore[attr-defined]
    assert response.json()["error"]["message"]  # type: ignore[attr-defined]


# --- the happy paths ------------------------------------------------------------------


def test_multipart_upload_returns_the_right_class(client: Client, photo_bytes: dict[str, bytes]) -> None:
    response = client.post("/v1/classify", files={"file": ("coffee.png", photo_bytes["coffee"], "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["version"]) == ("efficientnet_lite0", 1)
    assert body["class"] == "espresso" and body["confidence"] > 0.5
    assert len(body["predictions"]) == 5
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True)
    assert body["predictions"][0] == {"label": "espresso", "index": 967, "score": body["confidence"]}


def test_raw_image_body_and_top_k(client: Client, photo_bytes: dict[str, bytes]) -> None:
    response = client.post(
        "/v1/classify?top_k=2", content=photo_bytes["rocket"], headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200
    assert next(p["index"] for p in response.json()["predictions"]) in PHOTOS["rocket"]["top1"]  # type: ignore[operator]
    assert len(response.json()["predictions"]) == 2


def test_named_model_route_and_model_listing(client: Client, photo_bytes: dict[str, bytes]) -> None:
    response = client.post(
        "/v1/models/efficientnet_lite0/classify", files={"file": ("m.png", photo_bytes["motorcycle"], "image/png")}
    )
    assert response.json()["predictions"][0]["index"] in PHOTOS["motorcycle"]["top1"]  # type: ignore[operator]
    listing = client.get("/v1/models").json()
    assert listing["default"] == "efficientnet_lite0"
    (model,) = listing["models"]
    assert model["ready"] and model["classes"] == 1000 and model["input"]["shape"] == [-1, 224, 224, 3]


def test_batch_endpoint_answers_each_item_in_order_and_isolates_a_bad_one(
    client: Client, photo_bytes: dict[str, bytes]
) -> None:
    files = [
        ("files", ("a.png", photo_bytes["coffee"], "image/png")),
        ("files", ("b.txt", b"not an image at all", "text/plain")),
        ("files", ("c.png", photo_bytes["chelsea"], "image/png")),
        ("files", ("d.png", photo_bytes["cameraman"], "image/png")),
    ]
    response = client.post("/v1/classify/batch?top_k=1", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 4
    assert results[0]["class"] == "espresso"
    assert results[1]["error"]["code"] == "invalid_image"
    assert results[2]["predictions"][0]["index"] in CAT_CLASSES  # type: ignore[operator]
    assert results[3]["predictions"][0]["index"] in PHOTOS["cameraman"]["top1"]  # type: ignore[operator]


def test_a_batch_request_larger_than_max_batch_size_is_split_and_kept_in_order(
    client: Client, photo_bytes: dict[str, bytes]
) -> None:
    order = ["coffee", "chelsea", "rocket", "cameraman", "rocket", "chelsea", "cameraman"]  # 7 > max batch 4
    files = [("files", (f"{i}.png", photo_bytes[name], "image/png")) for i, name in enumerate(order)]
    results = client.post("/v1/classify/batch?top_k=1", files=files).json()["results"]
    assert len(results) == len(order)
    # The photos' classes are disjoint, so a class in the wrong place would fail here.
    for name, result in zip(order, results, strict=True):
        assert result["predictions"][0]["index"] in PHOTOS[name]["top1"]  # type: ignore[operator]


@pytest.mark.parametrize("variant", ["grayscale", "rgba", "palette", "cmyk", "gray16", "exif_rotated"])
def test_image_variants_are_valid_input_with_correct_predictions(
    client: Client, cat: Image.Image, variant: str
) -> None:
    if variant == "grayscale":
        data = encode(cat.convert("L"), "PNG")
    elif variant == "rgba":
        rgba = cat.convert("RGBA")
        rgba.putalpha(200)
        data = encode(rgba, "PNG")
    elif variant == "palette":
        data = encode(cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG")
    elif variant == "cmyk":
        data = encode(cat.convert("CMYK"), "JPEG", quality=95)
    elif variant == "gray16":
        gray = np.asarray(cat.convert("L"), dtype=np.uint16) * 257
        data = encode(Image.fromarray(gray), "PNG")
    else:  # the pixels are stored rotated; the EXIF tag says how to turn them upright
        exif = Image.Exif()
        exif[0x0112] = 8  # rotate 90° clockwise to view
        data = encode(cat.transpose(Image.Transpose.ROTATE_270), "JPEG", exif=exif, quality=95)
    response = client.post("/v1/classify", files={"file": ("cat", data, "application/octet-stream")})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["index"] in CAT_CLASSES  # type: ignore[operator]


# --- bad input: a clear 4xx JSON error each -------------------------------------------


def test_empty_body(client: Client) -> None:
    assert_error(client.post("/v1/classify", content=b"", headers={"Content-Type": "image/png"}), 400, "empty_body")


def test_empty_file_in_multipart(client: Client) -> None:
    assert_error(client.post("/v1/classify", files={"file": ("x.png", b"", "image/png")}), 400, "empty_body")


def test_non_image_bytes(client: Client) -> None:
    response = client.post("/v1/classify", files={"file": ("x.png", b"%PDF-1.4 definitely not pixels", "image/png")})
    assert_error(response, 400, "invalid_image")


def test_truncated_jpeg(client: Client, cat: Image.Image) -> None:
    data = encode(cat, "JPEG")
    response = client.post("/v1/classify", content=data[: len(data) // 2], headers={"Content-Type": "image/jpeg"})
    assert_error(response, 400, "invalid_image")


def test_unsupported_image_format(client: Client, cat: Image.Image) -> None:
    response = client.post("/v1/classify", content=encode(cat, "PPM"), headers={"Content-Type": "image/x-ppm"})
    assert_error(response, 415, "unsupported_image_format")


def test_unsupported_content_type(client: Client) -> None:
    response = client.post("/v1/classify", content=b'{"url": "x"}', headers={"Content-Type": "application/json"})
    assert_error(response, 415, "unsupported_media_type")


def test_image_above_the_pixel_limit(client: Client) -> None:
    bomb = encode(Image.new("1", (6000, 6000)), "PNG")  # 36 Mpx, a few kB
    response = client.post("/v1/classify", content=bomb, headers={"Content-Type": "image/png"})
    assert_error(response, 413, "image_too_large")


def test_body_above_the_size_limit_is_refused_from_its_length(client: Client) -> None:
    response = client.post("/v1/classify", content=b"\0" * (MAX_BODY + 1), headers={"Content-Type": "image/png"})
    assert_error(response, 413, "payload_too_large")


def test_chunked_body_above_the_size_limit_is_cut_off(client: Client) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(40):  # 40 x 100 kB = 4 MB, twice the limit
            sent += 1
            yield b"\0" * 100_000

    response = client.post("/v1/classify", content=chunks(), headers={"Content-Type": "image/png"})
    assert_error(response, 413, "payload_too_large")


def test_wrong_field_name(client: Client, photo_bytes: dict[str, bytes]) -> None:
    response = client.post("/v1/classify", files={"image": ("c.png", photo_bytes["coffee"], "image/png")})
    assert_error(response, 400, "missing_file")
    assert "'file'" in response.json()["error"]["message"]


@pytest.mark.parametrize("top_k", ["0", "-3", "101", "many"])
def test_top_k_out_of_range(client: Client, photo_bytes: dict[str, bytes], top_k: str) -> None:
    response = client.post(
        f"/v1/classify?top_k={top_k}", content=photo_bytes["coffee"], headers={"Content-Type": "image/png"}
    )
    assert_error(response, 422, "invalid_parameter")


@pytest.mark.parametrize("count", [9, 10, 30])
def test_too_many_files(client: Client, cat: Image.Image, count: int) -> None:
    small = encode(cat.resize((64, 64)), "PNG")
    files = [("files", (f"{i}.png", small, "image/png")) for i in range(count)]
    response = client.post("/v1/classify/batch", files=files)
    assert_error(response, 413, "too_many_images")
    assert "at most 8 images" in response.json()["error"]["message"]


def test_unknown_model_and_unknown_route(client: Client, photo_bytes: dict[str, bytes]) -> None:
    response = client.post(
        "/v1/models/resnet9000/classify", content=photo_bytes["coffee"], headers={"Content-Type": "image/png"}
    )
    assert_error(response, 404, "model_not_found")
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")


# --- operations -----------------------------------------------------------------------


def test_health_readiness_docs(client: Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {"efficientnet_lite0": True}
    assert client.get("/docs").status_code == 200
    assert "/v1/classify" in client.get("/openapi.json").json()["paths"]


def test_metrics_count_requests_and_batches(client: Client, photo_bytes: dict[str, bytes]) -> None:
    before = client.get("/metrics").text
    client.post("/v1/classify", content=photo_bytes["coffee"], headers={"Content-Type": "image/png"})
    after = client.get("/metrics").text

    def sample(text: str, prefix: str) -> float:
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    ok = 'imgserve_requests_total{method="POST",route="/v1/classify",status="200"}'
    assert sample(after, ok) == sample(before, ok) + 1
    batched = 'imgserve_batch_size_sum{model="efficientnet_lite0",version="1"}'
    assert sample(after, batched) == sample(before, batched) + 1
    assert 'imgserve_queue_depth{model="efficientnet_lite0",version="1"}' in after
    assert "imgserve_request_duration_seconds_bucket" in after
