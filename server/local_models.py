"""The models of this process: the registry built from the settings, loaded in the background
and rescanned on a schedule. The in-process server and the model-owner process both use it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress

from batching.clock import Clock
from server.metrics import Metrics
from server.registry import ModelRegistry
from server.runtimes import RuntimeOptions
from server.runtimes.base import RuntimeFactory
from server.settings import Settings

log = logging.getLogger(__name__)


def build_registry(
    settings: Settings,
    runtime_factory: RuntimeFactory,
    metrics: Metrics,
    clock: Clock,
    on_change: Callable[[], None] | None = None,
) -> ModelRegistry:
    return ModelRegistry(
        settings.model_repository,
        runtime_factory,
        RuntimeOptions(
            intra_op_threads=settings.inference_threads,
            preferred_runtime=settings.runtime,
            compute_dtype=settings.compute_dtype,
            device=settings.device,
        ),
        settings.batching,
        metrics,
        drain_timeout_s=settings.drain_timeout_s,
        max_model_bytes=settings.max_model_bytes,
        clock=clock,
        on_change=on_change,
    )


async def _poll(registry: ModelRegistry, interval_s: float, clock: Clock, stopping: asyncio.Event) -> None:
    """Rescan the repository every ``interval_s`` on ``clock`` until ``stopping`` is set."""
    while True:
        await clock.wait(stopping, clock.now() + interval_s)
        if stopping.is_set():
            return
        try:
            await registry.reload()
        except Exception:
            log.exception("repository poll failed")


class LocalModels:
    """``start``: load in the background (liveness answers at once, readiness after warm-up)
    and poll; ``close``: stop both, then drain and release every model."""

    def __init__(self, registry: ModelRegistry, poll_s: float, clock: Clock) -> None:
        self.registry = registry
        self._poll_s = poll_s
        self._clock = clock
        self._stopping = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []

    @property
    def catalog(self) -> ModelRegistry:
        return self.registry

    async def start(self) -> None:
        self._background.append(asyncio.create_task(self.registry.load_all(), name="load-models"))
        if self._poll_s > 0:
            polling = _poll(self.registry, self._poll_s, self._clock, self._stopping)
            self._background.append(asyncio.create_task(polling, name="poll-repository"))

    async def close(self) -> None:
        self._stopping.set()
        for task in self._background:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await self.registry.close()
