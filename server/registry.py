"""The models this server holds, loaded in the background so liveness answers at once."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from server.errors import ErrorKind, ServiceError
from server.metrics import Metrics
from server.model_instance import ModelInstance
from server.model_repository import latest_versions
from server.runtimes import RuntimeOptions
from server.runtimes.base import RuntimeFactory
from server.settings import BatchingSettings

log = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(
        self,
        repository: Path,
        runtime_factory: RuntimeFactory,
        runtime_options: RuntimeOptions,
        batching: BatchingSettings,
        metrics: Metrics,
    ) -> None:
        self._repository = repository
        self._runtime_factory = runtime_factory
        self._runtime_options = runtime_options
        self._batching = batching
        self._metrics = metrics
        self._models: dict[str, ModelInstance] = {}
        self.load_error: str | None = None

    @property
    def models(self) -> list[ModelInstance]:
        return list(self._models.values())

    @property
    def ready(self) -> bool:
        return bool(self._models) and all(m.ready for m in self._models.values())

    async def load_all(self) -> None:
        """Load and warm every model's newest version; record (not raise) a failure."""
        try:
            versions = latest_versions(self._repository)
            if not versions:
                raise FileNotFoundError(f"no model versions found in {self._repository}")
            for version in versions:
                # Loading a SavedModel blocks for seconds: keep the event loop answering.
                runtime = await asyncio.to_thread(
                    self._runtime_factory, version.manifest, version.path, self._runtime_options
                )
                batching = BatchingSettings.model_validate(
                    {**self._batching.model_dump(), **version.config.batching}
                ).to_config()
                instance = ModelInstance(
                    version.manifest,
                    version.path,
                    runtime,
                    batching,
                    metrics=self._metrics.batch_observer(version.manifest.name),
                )
                self._models[instance.name] = instance
                await instance.warm_up()
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model loading failed")

    def get(self, name: str) -> ModelInstance:
        model = self._models.get(name)
        if model is None:
            if not self.ready and self.load_error is None:
                raise ServiceError(ErrorKind.NOT_READY, "models are still loading", retry_after=1)
            raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"no model named {name!r}")
        if not model.ready:
            raise ServiceError(ErrorKind.NOT_READY, f"model {name!r} is warming up", retry_after=1)
        return model

    async def close(self, drain_timeout: float) -> None:
        await asyncio.gather(*(m.close(drain_timeout) for m in self._models.values()))
        self._models.clear()
