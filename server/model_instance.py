"""One served model version: its runtime, the one thread that runs it, and its batcher."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from batching import BatchingConfig, BatchObserver, MicroBatcher
from server.manifest import ModelManifest
from server.runtimes import Runtime

log = logging.getLogger(__name__)


class ModelInstance:
    def __init__(
        self,
        manifest: ModelManifest,
        path: Path,
        runtime: Runtime,
        batching: BatchingConfig,
        observer: BatchObserver | None = None,
    ) -> None:
        self.manifest = manifest
        self.path = path
        self._runtime = runtime
        # Model compute blocks; it runs on this dedicated thread, never on the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{manifest.name}")
        self._batcher: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(self._run_batch, batching, observer=observer)
        self.ready = False

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def batching(self) -> BatchingConfig:
        return self._batcher.config

    def _predict(self, items: list[np.ndarray]) -> list[np.ndarray]:
        # Stacking runs on the inference thread too, off the event loop.
        outputs = self._runtime.predict(np.stack(items))
        return list(outputs)

    async def _run_batch(self, items: list[np.ndarray]) -> list[np.ndarray]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, items)

    async def warm_up(self) -> None:
        """Run every batch size the batcher can form once, so no live request pays for a
        first-call allocation or kernel selection; then start taking traffic."""
        loop = asyncio.get_running_loop()
        dtype = np.dtype(self.manifest.input.dtype)
        for size in range(1, self.batching.max_batch_size + 1):
            batch = [np.zeros(self.manifest.item_shape, dtype=dtype)] * size
            await loop.run_in_executor(self._executor, self._predict, batch)
        self._batcher.start()
        self.ready = True
        log.info("model %s v%d warm for batch sizes 1..%d", self.name, self.version, self.batching.max_batch_size)

    async def infer(self, tensor: np.ndarray, deadline: float | None) -> np.ndarray:
        return await self._batcher.submit(tensor, deadline=deadline)

    async def close(self, drain_timeout: float) -> None:
        self.ready = False
        await self._batcher.close(drain_timeout)
        self._executor.shutdown(wait=True)
        self._runtime.close()
