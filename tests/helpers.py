"""Helpers the tests share: small images, bounded waits for what happens on other threads, and
the real app over a gated fake runtime (``tests.fakes.GatedRuntime``) with its request helpers."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image

from batching.clock import Clock
from loadtests.batching_bench import write_model
from model_contract.manifest import ModelManifest
from server.app import create_app
from server.ipc.owner import OwnerServer
from server.ipc.remote import RemoteCatalog
from server.runtimes import RuntimeOptions
from server.settings import Settings
from tests.fakes import GatedRuntime

MODEL = "fake"  # the fake model's name: 8x8 RGB images, 10 classes named class<i>

# Whether ``fake_app`` puts its models behind the process boundary's protocol (a model owner
# on a Unix socket and shared memory, in this event loop) instead of in the app. Modules that
# run their tests both ways flip it with the ``split_models`` fixture below.
SPLIT = False


class InLoopSplit:
    """The model owner and a worker's remote catalog in one event loop: every byte crosses the
    socket and shared memory as between processes, with the test's fake runtime and clock."""

    def __init__(self, settings: Settings, runtime_factory: Any, clock: Clock, metrics: Any, socket: Path) -> None:
        # One registry for both sides, as /metrics merges them between processes.
        self._owner = OwnerServer(settings, runtime_factory, clock, metrics)
        self._socket = socket
        self.catalog = RemoteCatalog(socket, metrics, clock, f"imgserve-test-{os.getpid()}-{id(self)}-")

    async def start(self) -> None:
        await self._owner.start(self._socket)
        await self.catalog.start()

    async def close(self) -> None:
        await self.catalog.close()
        await self._owner.close()
        shutil.rmtree(self._socket.parent, ignore_errors=True)


@pytest.fixture(params=["in-process", "split"])
def split_models(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Use in a module (``pytestmark = pytest.mark.usefixtures("split_models")``) to run each of
    its tests with the models in the app and behind the owner's protocol."""
    monkeypatch.setattr(sys.modules[__name__], "SPLIT", request.param == "split")
    return str(request.param)


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
    tracing: Any = None,
    **settings: Any,
) -> Any:
    """The real app over a repository of the fake model, every version run by ``runtime``."""
    write_fake_model(tmp_path, model_config)
    config = Settings(model_repository=tmp_path, default_model=MODEL, **settings)

    def factory(manifest: ModelManifest, path: Path, options: RuntimeOptions) -> GatedRuntime:
        return runtime

    if not SPLIT:
        return create_app(config, runtime_factory=factory, clock=clock, tracing=tracing)
    # A short path: a Unix socket's path is limited to about 100 bytes.
    socket = Path(tempfile.mkdtemp(prefix="imgserve-test-")) / "owner.sock"

    def split(metrics: Any, app_clock: Clock) -> InLoopSplit:
        return InLoopSplit(config, factory, app_clock, metrics, socket)

    return create_app(config, clock=clock, backend=split, tracing=tracing)


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
    return app.state.metrics.registry.get_sample_value("imgserve_queue_depth", {"model": MODEL, "version": "1"}) or 0.0
