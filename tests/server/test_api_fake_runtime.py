"""API behaviour under overload, deadlines, warm-up and runtime faults, with a gated fake
runtime so the test decides when the "model" finishes."""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from model_contract.manifest import ModelManifest
from server.app import create_app
from server.settings import BatchingSettings, LimitSettings, Settings
from tests.fakes import GatedRuntime, ManualClock
from tests.helpers import (
    MODEL,
    fake_app,
    is_ready,
    png,
    poll,
    post,
    queue_depth,
    serving,
    start_blocking_call,
    until,
    write_fake_model,
)
from tests.live_server import live_server

# Each test runs with the models in the app and behind the model owner's protocol.
pytestmark = pytest.mark.usefixtures("split_models")


def test_full_queue_answers_429_with_retry_after_and_serves_the_rest(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        batching = BatchingSettings(max_batch_size=1, max_queue_size=2)
        async with serving(tmp_path, runtime, batching=batching) as (client, app):
            in_flight = await start_blocking_call(client, runtime)
            queued = [post(client, 2), post(client, 3)]
            await until(lambda: queue_depth(app) == 2)
            rejected = await client.post("/v1/classify", content=png(4), headers={"Content-Type": "image/png"})
            assert rejected.status_code == 429
            assert int(rejected.headers["Retry-After"]) >= 1
            assert rejected.json()["error"]["code"] == "overloaded"
            runtime.gate.set()
            answers = await asyncio.gather(in_flight, *queued)
            assert [r.json()["class"] for r in answers] == ["class1", "class2", "class3"]
            dropped = app.state.metrics.registry.get_sample_value(
                "imgserve_dropped_images_total", {"model": MODEL, "version": "1", "reason": "rejected"}
            )
            assert dropped == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("deadline_from", ["server", "client"])
def test_request_whose_deadline_passes_in_the_queue_gets_504_and_never_runs(tmp_path: Path, deadline_from: str) -> None:
    async def scenario() -> None:
        runtime, clock = GatedRuntime(), ManualClock()
        # Either the server's own deadline is short, or the client shortens the default 10 s.
        limits = LimitSettings(request_timeout_s=0.2 if deadline_from == "server" else 10.0)
        headers = {"X-Request-Timeout-Ms": "200"} if deadline_from == "client" else {}
        batching = BatchingSettings(max_batch_size=1)
        async with serving(tmp_path, runtime, batching=batching, limits=limits, clock=clock) as (client, app):
            warm_calls = len(runtime.batch_sizes)
            in_flight = await start_blocking_call(client, runtime)
            late = post(client, 2, headers)
            await until(lambda: queue_depth(app) == 1)
            clock.advance(0.3)  # the queued request's 0.2 s deadline passes, on the app's clock
            runtime.gate.set()
            assert (await in_flight).status_code == 200
            response = await late
            assert response.status_code == 504
            assert response.json()["error"]["code"] == "timeout"
            assert len(runtime.batch_sizes) == warm_calls + 1  # only the first request ran

    asyncio.run(scenario())


def test_not_ready_until_warm_up_finishes(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        runtime.gate.clear()  # warm-up blocks
        async with serving(tmp_path, runtime, wait_ready=False) as (client, app):
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/ready")).status_code == 503
            early = await client.post("/v1/classify", content=png(1), headers={"Content-Type": "image/png"})
            assert early.status_code == 503
            assert early.json()["error"]["code"] == "not_ready"
            assert "Retry-After" in early.headers
            runtime.gate.set()
            await until(lambda: is_ready(app))
            assert (await client.get("/ready")).json()["ready"] is True

    asyncio.run(scenario())


def test_a_poisoned_image_fails_alone_and_its_batch_mates_are_answered(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime(poison=13)
        async with serving(tmp_path, runtime, batching=BatchingSettings(max_batch_size=8)) as (client, app):
            blocker = await start_blocking_call(client, runtime)
            values = [1, 2, 13, 4, 5]
            batch = [post(client, v) for v in values]
            await until(lambda: queue_depth(app) == len(values))
            runtime.gate.set()
            responses = await asyncio.gather(*batch)
            codes = [r.status_code for r in responses]
            assert codes == [200, 200, 500, 200, 200]
            assert [r.json()["class"] for i, r in enumerate(responses) if i != 2] == [
                "class1",
                "class2",
                "class4",
                "class5",
            ]
            assert responses[2].json()["error"]["code"] == "internal"
            assert 5 in runtime.batch_sizes  # they really were one batch before the bisection
            assert (await blocker).status_code == 200

    asyncio.run(scenario())


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_bad_timeout_header_is_a_422(tmp_path: Path, value: str) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime()) as (client, _):
            response = await post(client, 1, {"X-Request-Timeout-Ms": value})
            assert response.status_code == 422
            assert response.json()["error"]["code"] == "invalid_parameter"

    asyncio.run(scenario())


def test_batches_are_padded_to_allowed_sizes_and_only_those_are_warmed(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        batching = BatchingSettings(max_batch_size=8, allowed_batch_sizes=[1, 2, 4, 8])
        async with serving(tmp_path, runtime, batching=batching) as (client, app):
            assert runtime.batch_sizes == [1, 2, 4, 8]  # warm-up: each compiled shape once
            blocker = await start_blocking_call(client, runtime)
            batch = [post(client, v) for v in (5, 6, 7)]
            await until(lambda: queue_depth(app) == 3)
            runtime.gate.set()
            responses = await asyncio.gather(blocker, *batch)
            assert [r.json()["class"] for r in responses] == ["class1", "class5", "class6", "class7"]
            assert runtime.batch_sizes[4:] == [1, 4]  # 3 images ran as a batch of 4
            registry = app.state.metrics.registry
            assert (
                registry.get_sample_value("imgserve_batch_padding_images_total", {"model": MODEL, "version": "1"}) == 1
            )
            assert registry.get_sample_value("imgserve_batch_slots_total", {"model": MODEL, "version": "1"}) == 5

    asyncio.run(scenario())


def test_a_models_config_file_overrides_the_server_batching_defaults(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        app = fake_app(tmp_path, runtime, model_config={"batching": {"max_batch_size": 2}})
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                await until(lambda: is_ready(app))
                (model,) = (await client.get("/v1/models")).json()["models"]
                assert model["max_batch_size"] == 2
                assert runtime.batch_sizes == [1, 2]

    asyncio.run(scenario())


def test_a_client_that_disconnects_while_queued_never_reaches_the_model(tmp_path: Path) -> None:
    runtime = GatedRuntime()
    app = fake_app(tmp_path, runtime, batching=BatchingSettings(max_batch_size=4))
    registry = app.state.metrics.registry

    def abandoned() -> float:
        return (
            registry.get_sample_value(
                "imgserve_dropped_images_total", {"model": MODEL, "version": "1", "reason": "abandoned"}
            )
            or 0
        )

    def closed_by_client() -> float:
        labels = {"route": "/v1/classify", "method": "POST", "status": "499"}
        return registry.get_sample_value("imgserve_requests_total", labels) or 0

    with live_server(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        runtime.gate.clear()
        with ThreadPoolExecutor(max_workers=1) as pool:
            blocker = pool.submit(client.post, "/v1/classify", content=png(1), headers={"Content-Type": "image/png"})
            poll(lambda: runtime.entered == 5)  # 4 warm-up calls, then the blocker
            with pytest.raises(httpx.ReadTimeout):  # this client gives up and hangs up
                httpx.post(
                    f"{base_url}/v1/classify", content=png(7), headers={"Content-Type": "image/png"}, timeout=0.5
                )
            poll(lambda: closed_by_client() == 1)  # the server noticed, and gave up the work
            runtime.gate.set()
            assert blocker.result().status_code == 200
        poll(lambda: abandoned() == 1)
        assert 7 not in runtime.seen
        metrics = client.get("/metrics").text
        assert 'route="/v1/classify",status="499"' in metrics


def test_requests_beyond_the_in_progress_limit_get_429_before_decoding(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        limits = LimitSettings(max_requests_in_progress=2)
        async with serving(tmp_path, runtime, batching=BatchingSettings(max_batch_size=1), limits=limits) as (
            client,
            app,
        ):
            in_flight = await start_blocking_call(client, runtime)
            queued = post(client, 2)
            await until(lambda: queue_depth(app) == 1)
            refused = await client.post("/v1/classify", content=png(3), headers={"Content-Type": "image/png"})
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "overloaded"
            assert refused.headers["Retry-After"] == "1"
            runtime.gate.set()
            assert [(await r).status_code for r in (in_flight, queued)] == [200, 200]
            # Capacity comes back once those two are answered.
            assert (await post(client, 4)).status_code == 200

    asyncio.run(scenario())


def test_every_protocol_ranks_alike_and_refuses_a_top_k_past_the_limit_before_the_model_runs(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        async with serving(tmp_path, runtime, limits=LimitSettings(max_top_k=4)) as (client, app):
            warm_calls = runtime.entered
            encoded = base64.b64encode(png(3)).decode()

            def v2(k: int) -> dict[str, Any]:
                """The image as a binary BYTES element, the top k by the classification extension."""
                raw = len(png(3)).to_bytes(4, "little") + png(3)
                image = {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
                wanted = {"name": "probabilities", "parameters": {"classification": k}}
                header = orjson.dumps({"inputs": [image], "outputs": [wanted]})
                return {"content": header + raw, "headers": {"Inference-Header-Content-Length": str(len(header))}}

            refused = [
                await client.post("/v1/classify?top_k=5", content=png(3), headers={"Content-Type": "image/png"}),
                await client.post(f"/v2/models/{MODEL}/infer", **v2(5)),
                await client.post(f"/v1/models/{MODEL}:classify", json={"examples": [{"b64": encoded}], "top_k": 5}),
            ]
            assert [r.status_code for r in refused] == [422, 422, 422]
            messages = [refused[0].json()["error"]["message"], refused[1].json()["error"], refused[2].json()["error"]]
            assert set(messages) == {"top_k must be between 1 and 4"}
            decoded = app.state.metrics.registry.get_sample_value
            assert decoded("imgserve_images_decoded_total", {"model": MODEL, "version": "1", "outcome": "ok"}) is None
            assert runtime.entered == warm_calls  # refused before decoding, and before the model ran

            v1 = await client.post("/v1/classify?top_k=4", content=png(3), headers={"Content-Type": "image/png"})
            v1_ranking = [(p["index"], p["label"]) for p in v1.json()["predictions"]]
            (v2_output,) = (await client.post(f"/v2/models/{MODEL}/infer", **v2(4))).json()["outputs"]
            v2_ranking = [(int(e.split(":")[1]), e.split(":")[2]) for e in v2_output["data"]]
            tf = await client.post(f"/v1/models/{MODEL}:classify", json={"examples": [{"b64": encoded}]})
            (tf_result,) = tf.json()["results"]  # no top_k: TF Serving's default, capped by the limit
            tf_labels = [label for label, _ in tf_result]
            assert v1_ranking[0] == (3, "class3") and v2_ranking == v1_ranking
            assert tf_labels == [label for _, label in v1_ranking]

    asyncio.run(scenario())


def test_every_protocol_describes_a_model_with_the_runtime_serving_it_and_its_output_dtype(tmp_path: Path) -> None:
    async def scenario() -> None:
        # The version also carries a LiteRT artifact, and the server prefers LiteRT: LiteRT serves it.
        write_fake_model(tmp_path)
        folder = tmp_path / MODEL / "1"
        manifest = ModelManifest.read(folder)
        half = manifest.output.model_copy(update={"dtype": "float16"})
        manifest.model_copy(update={"artifacts": {"litert": "model.tflite"}, "output": half}).write(folder)
        settings = Settings(model_repository=tmp_path, default_model=MODEL, runtime="litert")
        app = create_app(settings, runtime_factory=lambda manifest, path, options: GatedRuntime())
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                await until(lambda: is_ready(app))
                (listed,) = (await client.get("/v1/models")).json()["models"]
                v2 = (await client.get(f"/v2/models/{MODEL}")).json()
                assert listed["runtime"] == "litert" and v2["platform"] == "tensorflow_lite"
                assert v2["outputs"] == [{"name": "probabilities", "datatype": "FP16", "shape": [-1, 10]}]
                image = {"name": "images", "datatype": "UINT8", "shape": [1, 8, 8, 3], "data": [2] * 192}
                (output,) = (await client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [image]})).json()["outputs"]
                assert output["datatype"] == "FP16" and np.argmax(output["data"]) == 2
                signature = (await client.get(f"/v1/models/{MODEL}/metadata")).json()["metadata"]["signature_def"]
                assert signature["signature_def"]["serving_default"]["outputs"]["probabilities"]["dtype"] == "DT_HALF"

    asyncio.run(scenario())
