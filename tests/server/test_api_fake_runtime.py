"""API behaviour under overload, deadlines, warm-up and runtime faults, with a gated fake
runtime so the test decides when the "model" finishes."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from server.app import create_app
from server.manifest import ModelManifest
from server.runtimes import RuntimeOptions
from server.settings import BatchingSettings, LimitSettings, Settings
from tests.fakes import GatedRuntime

MODEL = "fake"


def write_fake_model(repository: Path) -> None:
    version = repository / MODEL / "1"
    version.mkdir(parents=True)
    manifest = {
        "name": MODEL,
        "version": 1,
        "runtime": "fake",
        "artifact": "none",
        "input": {"name": "images", "dtype": "uint8", "shape": [-1, 8, 8, 3]},
        "output": {"name": "probabilities", "dtype": "float32", "shape": [-1, 10]},
        "preprocessing": {"resize_shorter_side": 8, "crop_size": 8, "interpolation": "bilinear"},
        "labels": [f"class{i}" for i in range(10)],
    }
    (version / "manifest.json").write_text(json.dumps(manifest))


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@asynccontextmanager
async def serving(
    tmp_path: Path, runtime: GatedRuntime, wait_ready: bool = True, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    write_fake_model(tmp_path)
    config = Settings(model_repository=tmp_path, default_model=MODEL, **settings)

    def factory(manifest: ModelManifest, path: Path, options: RuntimeOptions) -> GatedRuntime:
        return runtime

    app = create_app(config, runtime_factory=factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if wait_ready:
                for _ in range(500):
                    if (await client.get("/ready")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
            yield client, app


async def until(condition: Any, rounds: int = 500) -> None:
    """Wait (bounded) for a condition the server reaches on its own threads."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


async def start_blocking_call(client: httpx.AsyncClient, runtime: GatedRuntime) -> asyncio.Future[httpx.Response]:
    """Shut the gate and send one request; return once the runtime is stuck inside it."""
    runtime.gate.clear()
    calls = runtime.entered
    in_flight = post(client, 1)
    await until(lambda: runtime.entered == calls + 1)
    return in_flight


def post(client: httpx.AsyncClient, value: int) -> asyncio.Future[httpx.Response]:
    return asyncio.ensure_future(client.post("/v1/classify", content=png(value), headers={"Content-Type": "image/png"}))


def queue_depth(app: Any) -> float:
    return app.state.metrics.registry.get_sample_value("imgserve_queue_depth", {"model": MODEL}) or 0.0


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
                "imgserve_dropped_images_total", {"model": MODEL, "reason": "rejected"}
            )
            assert dropped == 1

    asyncio.run(scenario())


def test_request_whose_deadline_passes_in_the_queue_gets_504_and_never_runs(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        limits = LimitSettings(request_timeout_s=0.2)
        async with serving(tmp_path, runtime, batching=BatchingSettings(max_batch_size=1), limits=limits) as (
            client,
            app,
        ):
            warm_calls = len(runtime.batch_sizes)
            in_flight = await start_blocking_call(client, runtime)
            late = post(client, 2)
            await until(lambda: queue_depth(app) == 1)
            await asyncio.sleep(0.3)  # let the queued request's 0.2 s deadline pass
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
        async with serving(tmp_path, runtime, wait_ready=False) as (client, _):
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/ready")).status_code == 503
            early = await client.post("/v1/classify", content=png(1), headers={"Content-Type": "image/png"})
            assert early.status_code == 503
            assert early.json()["error"]["code"] == "not_ready"
            assert "Retry-After" in early.headers
            runtime.gate.set()
            for _ in range(500):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
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
