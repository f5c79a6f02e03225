"""Releasing a model is bounded and off the event loop: a runtime that hangs in ``close`` (or
in ``predict``) is logged and left behind, and shutdown still ends."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from batching import BatcherClosed
from loadtests.batching_bench import write_model
from model_contract.manifest import ModelManifest
from server.metrics import Metrics
from server.registry import ModelRegistry
from server.runtimes import RuntimeOptions
from server.settings import BatchingSettings
from tests.fakes import GatedRuntime
from tests.helpers import until


class StuckOnClose(GatedRuntime):
    """``close`` blocks until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = threading.Event()
        self.let_go = threading.Event()

    def close(self) -> None:
        self.closing.set()
        self.let_go.wait(timeout=30)


class ClosesWithTheLoopFree(GatedRuntime):
    """``close`` ends only if the event loop keeps running while it waits: run on the loop,
    it would wait in vain."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.closed = False

    def close(self) -> None:
        answered = threading.Event()
        self.loop.call_soon_threadsafe(answered.set)
        self.closed = answered.wait(timeout=5)


def registry_of(repository: Path, runtime: GatedRuntime, release_timeout_s: float) -> ModelRegistry:
    write_model(repository, "m", "fake", image_size=8, resize_shorter_side=8, classes=10)

    def factory(manifest: ModelManifest, path: Path, options: RuntimeOptions) -> GatedRuntime:
        return runtime

    return ModelRegistry(
        repository,
        factory,
        RuntimeOptions(),
        BatchingSettings(max_batch_size=1),
        Metrics(),
        drain_timeout_s=0.1,
        release_timeout_s=release_timeout_s,
    )


def test_a_runtime_that_hangs_in_close_is_logged_and_shutdown_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = StuckOnClose()

    async def scenario() -> None:
        registry = registry_of(tmp_path, runtime, release_timeout_s=0.2)
        await registry.load_all()
        started = time.monotonic()
        await asyncio.wait_for(registry.close(), timeout=5)
        assert runtime.closing.is_set()
        # Bounded by the release timeout, not by the runtime (run on the loop, close would
        # have blocked it, wait_for included, for the runtime's 30 s).
        assert time.monotonic() - started < 2
        assert registry.models == []

    try:
        with caplog.at_level(logging.ERROR):
            asyncio.run(scenario())
    finally:
        runtime.let_go.set()
    assert any("did not release" in r.getMessage() for r in caplog.records)


async def close_with_a_call_stuck_in_predict(repository: Path, runtime: GatedRuntime) -> None:
    """Load, get one call stuck in predict (the gate stays shut), then close the registry: the
    call fails as closed, and the close ends (drain 0.1 s, then release 0.2 s)."""
    registry = registry_of(repository, runtime, release_timeout_s=0.2)
    await registry.load_all()
    runtime.gate.clear()
    stuck = asyncio.ensure_future(registry.get("m").infer_many([np.zeros((8, 8, 3), np.uint8)], deadline=None))
    await until(lambda: runtime.entered == 2)  # the warm-up call, then this one
    await asyncio.wait_for(registry.close(), timeout=5)
    with pytest.raises(BatcherClosed):
        await stuck


def test_a_runtime_stuck_in_predict_does_not_hold_shutdown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runtime = GatedRuntime()
    try:
        with caplog.at_level(logging.ERROR):
            asyncio.run(close_with_a_call_stuck_in_predict(tmp_path, runtime))
    finally:
        runtime.gate.set()
    assert any("did not release" in r.getMessage() for r in caplog.records)


def test_close_runs_off_the_event_loop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        runtime = ClosesWithTheLoopFree(asyncio.get_running_loop())
        registry = registry_of(tmp_path, runtime, release_timeout_s=10)
        await registry.load_all()
        await registry.close()
        assert runtime.closed

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert not caplog.records


def _stuck_forever(repository: str) -> None:
    """Run in a child process: a model stuck in predict for good, then shutdown, then exit."""
    asyncio.run(close_with_a_call_stuck_in_predict(Path(repository), GatedRuntime()))  # gate never opened
    print("shut down", flush=True)


def test_a_process_with_a_runtime_stuck_in_predict_still_exits(tmp_path: Path) -> None:
    """The threads that run the model are daemons: the interpreter does not wait for a call
    that never returns (it would, forever, for an executor's thread)."""
    code = f"from tests.server.test_model_release import _stuck_forever; _stuck_forever({str(tmp_path)!r})"
    root = Path(__file__).resolve().parents[2]
    # The stuck call gives up after GatedRuntime's 30 s: an exit that waited for it would time out here.
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "shut down" in result.stdout
