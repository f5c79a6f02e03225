"""One served model version: its batcher and its lifecycle (warm up, take traffic, drain,
release). Running batches is the ``BatchRunner``'s job, caching the ``CachedResults``'."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from batching import BatchingConfig, MicroBatcher
from batching.clock import Clock
from model_contract.manifest import ModelManifest
from model_contract.preprocess import PreprocessSpec
from server.batch_runner import BatchRunner
from server.metrics import ModelBatchMetrics
from server.result_cache import CachedResults
from server.serving import Compute, Offload, OnStart

log = logging.getLogger(__name__)

# After the queue has drained, how long the runtime may take to let go of its memory.
RELEASE_TIMEOUT_S = 5.0


class ModelInstance:
    def __init__(
        self,
        manifest: ModelManifest,
        path: Path,
        runner: BatchRunner,
        batching: BatchingConfig,
        *,
        runtime: str,
        clock: Clock,
        metrics: ModelBatchMetrics | None = None,
        results: CachedResults | None = None,
        release_timeout_s: float = RELEASE_TIMEOUT_S,
    ) -> None:
        self.manifest = manifest
        self.path = path
        self.runtime = runtime
        self._runner = runner
        self._batcher: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(
            runner.run, batching, clock=clock, observer=metrics
        )
        self._results = results
        self._release_timeout_s = release_timeout_s
        self.ready = False

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def preprocessing(self) -> PreprocessSpec:
        return self.manifest.preprocessing

    @property
    def batching(self) -> BatchingConfig:
        return self._batcher.config

    @property
    def max_queue_size(self) -> int:
        return self.batching.max_queue_size

    @property
    def max_batch_size(self) -> int:
        return self.batching.max_batch_size

    @property
    def cache_limits(self) -> tuple[int, int] | None:
        """(max_entries, max_bytes) of this version's result cache; None: it caches nothing."""
        return None if self._results is None else self._results.limits

    async def warm_up(self) -> None:
        """Warm every batch shape, then start taking traffic."""
        await self._runner.warm_up()
        self._batcher.start()
        self.ready = True
        log.info("model %s v%d warm for batch sizes %s", self.name, self.version, list(self.batching.batch_shapes))

    async def infer_many(
        self,
        tensors: Sequence[np.ndarray],
        deadline: float | None,
        on_start: OnStart | None = None,
        priority: int = 0,
    ) -> list[np.ndarray]:
        return await self._batcher.submit_many(tensors, deadline=deadline, on_start=on_start, priority=priority)

    async def remembered(self, encoded: bytes, compute: Compute, offload: Offload) -> np.ndarray:
        if self._results is None:
            return await compute()
        return await self._results.remembered(encoded, compute, offload)

    async def close(self, drain_timeout: float) -> None:
        """Stop intake, drain the queue within ``drain_timeout``, then release the runtime
        (bounded too: a runtime that hangs is logged and left behind)."""
        self.ready = False
        await self._batcher.close(drain_timeout)
        await self._runner.close(self._release_timeout_s)
