"""Admission before work, through the real app on a gated fake runtime: a request's cost (body
bytes, images) is checked before anything is decoded, the same limit holds on every protocol,
what no retry could admit is 413, and a failed request leaves no work behind."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from model_contract.errors import ServiceError
from server.api.admit import declared_length
from server.api.error_handlers import HTTP_STATUS
from server.settings import BatchingSettings, LimitSettings
from tests.fakes import GatedRuntime
from tests.helpers import MODEL, heavy_png, png, queue_depth, serving, start_blocking_call, until, v2_bytes

# Each test runs with the models in the app and behind the model owner's protocol.
pytestmark = pytest.mark.usefixtures("split_models")

IMAGE = {"Content-Type": "image/png"}


def decoded(app: Any) -> float:
    sample = app.state.metrics.registry.get_sample_value
    return sum(
        sample("imgserve_images_decoded_total", {"model": MODEL, "version": "1", "outcome": o}) or 0
        for o in ("ok", "refused")
    )


def too_many_requests(count: int) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """The same ``count`` images on each protocol: (protocol, path, httpx request arguments)."""
    images = [png(i) for i in range(count)]
    yield (
        "v1 batch",
        "/v1/classify/batch",
        {"files": [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]},
    )
    body, headers = v2_bytes(images)
    yield "v2 BYTES", f"/v2/models/{MODEL}/infer", {"content": body, "headers": headers}
    pixels = {"name": "images", "datatype": "UINT8", "shape": [count, 8, 8, 3], "data": [1] * (count * 192)}
    yield "v2 UINT8", f"/v2/models/{MODEL}/infer", {"json": {"inputs": [pixels]}}
    instances = [{"b64": base64.b64encode(b).decode()} for b in images]
    yield "TF Serving", f"/v1/models/{MODEL}:predict", {"json": {"instances": instances}}


def test_more_images_than_one_request_may_carry_is_413_on_every_protocol_and_nothing_is_decoded(tmp_path: Path) -> None:
    async def scenario() -> None:
        limits = LimitSettings(max_images_per_request=4)
        async with serving(tmp_path, GatedRuntime(), limits=limits) as (client, app):
            for protocol, path, arguments in too_many_requests(5):
                refused = await client.post(path, **arguments)
                assert refused.status_code == 413, (protocol, refused.text)
                assert "4" in str(refused.json()["error"]), protocol
            assert decoded(app) == 0
            for protocol, path, arguments in too_many_requests(4):
                assert (await client.post(path, **arguments)).status_code == 200, protocol

    asyncio.run(scenario())


def test_a_flood_of_tiny_images_is_refused_before_any_is_decoded(tmp_path: Path) -> None:
    """2,000 tiny PNGs in one 150 KB body once cost a CPU-second and 300 MB before any check."""

    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime()) as (client, app):
            body, headers = v2_bytes([png(1)] * 2000)
            refused = await client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
            assert refused.status_code == 413 and "at most 64" in refused.json()["error"]
            assert decoded(app) == 0

    asyncio.run(scenario())


def test_a_request_larger_than_the_models_queue_is_413_not_a_retry_that_can_never_succeed(tmp_path: Path) -> None:
    async def scenario() -> None:
        batching = BatchingSettings(max_batch_size=2, max_queue_size=3)
        async with serving(tmp_path, GatedRuntime(), batching=batching) as (client, app):
            files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(4)]
            refused = await client.post("/v1/classify/batch", files=files)
            assert refused.status_code == 413 and "Retry-After" not in refused.headers
            assert refused.json()["error"]["code"] == "too_many_images" and decoded(app) == 0

    asyncio.run(scenario())


def test_images_in_progress_are_bounded_across_requests(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        limits = LimitSettings(max_images_in_progress=3, max_images_per_request=2)
        async with serving(tmp_path, runtime, limits=limits, batching=BatchingSettings(max_batch_size=1)) as (
            client,
            app,
        ):
            in_flight = await start_blocking_call(client, runtime)  # holds 1 of 3
            files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(2)]
            pair = asyncio.ensure_future(client.post("/v1/classify/batch", files=files))  # holds 3 of 3
            await until(lambda: queue_depth(app) == 2)
            refused = await client.post("/v1/classify", content=png(5), headers=IMAGE)
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert "images in progress" in refused.json()["error"]["message"]
            runtime.gate.set()
            assert (await in_flight).status_code == 200 and (await pair).status_code == 200
            assert (await client.post("/v1/classify", content=png(5), headers=IMAGE)).status_code == 200

    asyncio.run(scenario())


def padded(value: int, size: int) -> bytes:
    """A valid PNG of ``size`` bytes: decoders stop at IEND and ignore what follows."""
    image = png(value)
    return image + b"\0" * (size - len(image))


def test_bytes_of_bodies_in_flight_are_bounded_before_the_body_is_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        limits = LimitSettings(max_body_bytes=4000, max_body_bytes_in_flight=5000)
        async with serving(tmp_path, runtime, limits=limits) as (client, _):
            runtime.gate.clear()
            calls = runtime.entered
            held = asyncio.ensure_future(client.post("/v1/classify", content=padded(1, 3000), headers=IMAGE))
            await until(lambda: runtime.entered == calls + 1)
            refused = await client.post("/v1/classify", content=padded(2, 3000), headers=IMAGE)
            assert refused.status_code == 429 and "bytes of request bodies" in refused.json()["error"]["message"]
            small = asyncio.ensure_future(client.post("/v1/classify", content=padded(3, 1000), headers=IMAGE))
            runtime.gate.set()
            assert (await held).status_code == 200 and (await small).status_code == 200  # it fit in what was left
            assert (await client.post("/v1/classify", content=padded(2, 3000), headers=IMAGE)).status_code == 200

    asyncio.run(scenario())


def test_a_chunked_body_stops_at_the_body_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        # The in-flight budget holds exactly one full body: any bytes the refused request kept
        # would turn the next full-size request into a 429.
        limits = LimitSettings(max_body_bytes=4000, max_body_bytes_in_flight=4000)
        async with serving(tmp_path, GatedRuntime(), limits=limits) as (client, _):

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b"\0" * 1000

            refused = await client.post("/v1/classify", content=chunks(), headers=IMAGE)
            assert refused.status_code == 413 and refused.headers["Connection"] == "close"
            assert (await client.post("/v1/classify", content=padded(1, 4000), headers=IMAGE)).status_code == 200

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("value", "length"),
    [(b"0", 0), (b"12", 12), (b" 12", None), (b"+12", None), (b"1_2", None), (b"-1", None), (b"9" * 19, None)],
)
def test_content_length_is_digits_only(value: bytes, length: int | None) -> None:
    scope = {"headers": [(b"content-length", value)]}
    if length is None:
        with pytest.raises(ServiceError) as refused:
            declared_length(scope)
        assert HTTP_STATUS[refused.value.kind] == 400
    else:
        assert declared_length(scope) == length


def test_budgets_smaller_than_one_request_are_a_configuration_error() -> None:
    with pytest.raises(ValidationError, match="max_body_bytes_in_flight"):
        LimitSettings(max_body_bytes=1000, max_body_bytes_in_flight=999)
    with pytest.raises(ValidationError, match="max_images_in_progress"):
        LimitSettings(max_images_per_request=10, max_images_in_progress=9)


def test_a_bad_image_withdraws_its_siblings_decodes(tmp_path: Path) -> None:
    """One corrupt element among many heavy ones: the request answers 400 and the decodes
    still queued for it never run, so the next request does not wait behind them."""

    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime(), decode_threads=1) as (client, app):
            heavy = heavy_png(0)
            body, headers = v2_bytes([b"not an image", *[heavy] * 20])
            refused = await client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
            assert refused.status_code == 400
            # The bad one, and at most the one or two the decode thread had started before
            # the failure reached the event loop.
            assert decoded(app) <= 3
            assert (await client.post("/v1/classify", content=png(4), headers=IMAGE)).status_code == 200

    asyncio.run(scenario())


def test_in_a_batch_request_a_bad_image_is_answered_alone(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime()) as (client, _):
            truncated = png(7)[:40]
            files = [("files", (n, b, "image/png")) for n, b in (("a", png(1)), ("b", truncated), ("c", png(2)))]
            answer = await client.post("/v1/classify/batch", files=files)
            assert answer.status_code == 200
            first, bad, last = answer.json()["results"]
            assert (first["class"], last["class"]) == ("class1", "class2")
            assert bad["error"]["code"] == "invalid_image"

    asyncio.run(scenario())
