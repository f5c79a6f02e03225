"""One served model version: its runtime, the threads that feed and run it, its batcher."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from batching import BatchingConfig, MicroBatcher
from model_contract.manifest import ModelManifest
from server.metrics import ModelBatchMetrics
from server.result_cache import ResultCache
from server.runtimes import Runtime

log = logging.getLogger(__name__)


class ModelInstance:
    def __init__(
        self,
        manifest: ModelManifest,
        path: Path,
        runtime: Runtime,
        batching: BatchingConfig,
        metrics: ModelBatchMetrics | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        self.manifest = manifest
        self.path = path
        self._runtime = runtime
        self._metrics = metrics
        self._dtype = np.dtype(manifest.input.dtype)
        self.preprocess = manifest.preprocessing
        # Host work (stacking, padding) and model compute each get their own thread, so with
        # two batches in flight the next is assembled while the current one runs; neither
        # ever blocks the event loop.
        self._assembler = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"assemble-{manifest.name}")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{manifest.name}")
        self._batcher: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(self._run_batch, batching, observer=metrics)
        self.ready = False
        self._cache = cache

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def batching(self) -> BatchingConfig:
        return self._batcher.config

    def _assemble(self, items: list[np.ndarray]) -> np.ndarray:
        """Stack into one array of the padded batch size; padding rows stay zero."""
        rows = self.batching.padded_size(len(items))
        batch = np.zeros((rows, *self.manifest.item_shape), dtype=self._dtype)
        np.stack(items, out=batch[: len(items)])
        if self._metrics is not None:
            self._metrics.padded(len(items), rows)
        return batch

    async def _run_batch(self, items: list[np.ndarray]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        batch = await loop.run_in_executor(self._assembler, self._assemble, items)
        outputs = await loop.run_in_executor(self._executor, self._runtime.predict, batch)
        return list(outputs[: len(items)])

    async def warm_up(self) -> None:
        """Run every batch shape the runtime will be called with, so no live request pays
        for a first-call allocation or kernel selection; then start taking traffic."""
        loop = asyncio.get_running_loop()
        for rows in self.batching.batch_shapes:
            batch = np.zeros((rows, *self.manifest.item_shape), dtype=self._dtype)
            await loop.run_in_executor(self._executor, self._runtime.predict, batch)
        self._batcher.start()
        self.ready = True
        log.info("model %s v%d warm for batch sizes %s", self.name, self.version, list(self.batching.batch_shapes))

    def cached(self, key: bytes | None) -> np.ndarray | None:
        """The stored output for this input, if the model has a cache and holds it."""
        if self._cache is None or key is None:
            return None
        hit = self._cache.get(key)
        if self._metrics is not None:
            (self._metrics.cache_hits if hit is not None else self._metrics.cache_misses).inc()
        return hit

    def remember(self, key: bytes | None, output: np.ndarray) -> None:
        if self._cache is not None and key is not None:
            self._cache.put(key, output)

    def cache_key(self, data: bytes | np.ndarray) -> bytes | None:
        return None if self._cache is None else ResultCache.key(data)

    async def infer(self, tensor: np.ndarray, deadline: float | None) -> np.ndarray:
        return await self._batcher.submit(tensor, deadline=deadline)

    async def infer_many(self, tensors: list[np.ndarray], deadline: float | None) -> list[np.ndarray]:
        return await self._batcher.submit_many(tensors, deadline=deadline)

    async def close(self, drain_timeout: float) -> None:
        self.ready = False
        await self._batcher.close(drain_timeout)
        self._assembler.shutdown(wait=True)
        self._executor.shutdown(wait=True)
        self._runtime.close()
