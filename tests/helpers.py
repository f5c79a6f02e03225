"""Helpers the tests share: small images, bounded waits for what happens on other threads, and
the real app over a gated fake runtime (``tests.fakes.GatedRuntime``) with its request helpers."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from PIL import Image

from batching.clock import Clock
from loadtests.batching_bench import write_model
from model_contract.manifest import ModelManifest
from server.app import create_app
from server.runtimes import RuntimeOptions
from server.settings import Settings
from tests.fakes import GatedRuntime

MODEL = "fake"  # the fake model's name: 8x8 RGB images, 10 classes named class<i>


def png(value: int) -> bytes:
    """An 8x8 PNG of one colour; the fakes classify it as class ``value % classes``."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def heavy_png(seed: int) -> bytes:
    """A 1600x1600 gradient: a small file that takes tens of milliseconds to decode."""
    ramp = np.linspace(0, 255, 1600, dtype=np.float32)
    pixels = (ramp[None, :, None] + seed) % 256 * np.ones((1600, 1, 3), np.float32)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def v2_bytes(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A v2 infer body carrying ``images`` as one binary BYTES input, and its headers."""
    raw = b"".join(len(i).to_bytes(4, "little") + i for i in images)
    header = orjson.dumps(
        {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(images)],
                     "parameters": {"binary_data_size": len(raw)}}]}
    )  # fmt: skip
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


async def until(condition: Any, rounds: int = 500) -> None:
    """Wait (bounded) for a condition the server reaches on its own threads (loading a model,
    running a batch): only there does real time pass; deadlines move on a ManualClock."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


def poll(condition: Any, rounds: int = 500) -> None:
    """Wait (bounded) for a condition a live server reaches on its own threads."""
    for _ in range(rounds):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition never became true")


def write_fake_model(repository: Path, config: dict[str, Any] | None = None, version: int = 1) -> None:
    write_model(
        repository, MODEL, "fake", image_size=8, resize_shorter_side=8, classes=10, version=version, config=config
    )


def fake_app(
    tmp_path: Path,
    runtime: GatedRuntime,
    model_config: dict[str, Any] | None = None,
    clock: Clock | None = None,
    **settings: Any,
) -> Any:
    """The real app over a repository of the fake model, every version run by ``runtime``."""
    write_fake_model(tmp_path, model_config)
    config = Settings(model_repository=tmp_path, default_model=MODEL, **settings)

    def factory(manifest: ModelManifest, path: Path, options: RuntimeOptions) -> GatedRuntime:
        return runtime

    return create_app(config, runtime_factory=factory, clock=clock)


def is_ready(app: Any) -> bool:
    return bool(app.state.service.readiness().ready)


@asynccontextmanager
async def serving(
    tmp_path: Path, runtime: GatedRuntime, wait_ready: bool = True, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """``fake_app`` started, with a client over ASGI; ready unless ``wait_ready=False``."""
    app = fake_app(tmp_path, runtime, **settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            if wait_ready:
                await until(lambda: is_ready(app))
            yield client, app


def post(
    client: httpx.AsyncClient, value: int, headers: dict[str, str] | None = None
) -> asyncio.Future[httpx.Response]:
    """``png(value)`` sent to /v1/classify, in flight."""
    headers = {"Content-Type": "image/png", **(headers or {})}
    return asyncio.ensure_future(client.post("/v1/classify", content=png(value), headers=headers))


async def start_blocking_call(client: httpx.AsyncClient, runtime: GatedRuntime) -> asyncio.Future[httpx.Response]:
    """Shut the gate and send one request; return once the runtime is stuck inside it."""
    runtime.gate.clear()
    calls = runtime.entered
    in_flight = post(client, 1)
    await until(lambda: runtime.entered == calls + 1)
    return in_flight


def queue_depth(app: Any) -> float:
    return app.state.metrics.registry.get_sample_value("imgserve_queue_depth", {"model": MODEL}) or 0.0
