"""The models this server holds, by name and version, and how they change without downtime.

Loading runs in the background, so liveness answers at once. ``reload`` rescans the
repository. It loads and warms new versions before they take traffic, then swaps the routing
in one step. Versions that left are drained (their queued work finishes) and released. A
version that fails to load leaves the serving ones untouched, and its error is reported. So
does a broken model or version in the repository: only it is skipped, and ``errors`` says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from batching.clock import Clock, MonotonicClock
from model_contract.errors import ErrorKind, ServiceError, echo
from server.batch_runner import BatchRunner
from server.metrics import Metrics
from server.model_instance import RELEASE_TIMEOUT_S, ModelInstance
from server.model_repository import ModelVersion, RepositoryScan, scan_repository
from server.result_cache import CachedResults, ResultCache
from server.runtimes import RuntimeOptions, choose_runtime
from server.runtimes.base import RuntimeFactory
from server.serving import pick_version
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
        drain_timeout_s: float = 10.0,
        max_model_bytes: int = 0,
        clock: Clock | None = None,
        release_timeout_s: float = RELEASE_TIMEOUT_S,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """``on_change``: called, on the event loop, whenever what is served (versions,
        readiness, errors) may have changed; a new version's routing before the version it
        replaced is retired."""
        self._repository = repository
        self._runtime_factory = runtime_factory
        self._runtime_options = runtime_options
        self._batching = batching
        self._metrics = metrics
        self._drain_timeout_s = drain_timeout_s
        self._max_model_bytes = max_model_bytes
        # The service's clock too: a deadline it computes is compared on this one by the batchers.
        self._clock: Clock = clock or MonotonicClock()
        self._release_timeout_s = release_timeout_s
        self._serving: dict[str, dict[int, ModelInstance]] = {}
        self._errors: dict[str, str] = {}  # per model
        self._repository_error: str | None = None
        self._lock = asyncio.Lock()
        self._loaded_once = False
        self._on_change = on_change or (lambda: None)

    @property
    def models(self) -> list[ModelInstance]:
        return [instance for versions in self._serving.values() for instance in versions.values()]

    @property
    def ready(self) -> bool:
        return bool(self._serving) and all(m.ready for m in self.models)

    @property
    def errors(self) -> dict[str, str]:
        """Per model, why it or some of its versions do not serve; "repository" when it cannot be read."""
        repository = {"repository": self._repository_error} if self._repository_error else {}
        return {**self._errors, **repository}

    @property
    def failed_models(self) -> list[str]:
        """The models with an error, without the reasons (which may be long, or sensitive)."""
        return sorted(self._errors)

    @property
    def repository_readable(self) -> bool:
        return self._repository_error is None

    async def load_all(self) -> None:
        await self.reload()
        self._loaded_once = True
        self._on_change()

    @property
    def loaded_once(self) -> bool:
        """The first scan of the repository has finished loading."""
        return self._loaded_once

    def _resident_bytes(self) -> int:
        return sum(_artifact_bytes(m.path) for m in self.models)

    async def _check_budget(self, version: ModelVersion) -> None:
        if not self._max_model_bytes:
            return
        # Walking artifact folders is file I/O: off the event loop.
        size = await asyncio.to_thread(_artifact_bytes, version.path)
        if await asyncio.to_thread(self._resident_bytes) + size > self._max_model_bytes:
            raise MemoryError(
                f"loading {version.manifest.name} v{version.manifest.version} ({size} bytes) would exceed the "
                f"model memory budget of {self._max_model_bytes} bytes"
            )

    async def _load(self, version: ModelVersion) -> ModelInstance:
        await self._check_budget(version)
        manifest = version.manifest
        # Loading a model blocks for seconds: keep the event loop answering.
        runtime = await asyncio.to_thread(self._runtime_factory, manifest, version.path, self._runtime_options)
        batching = version.config.batching_for(self._batching).to_config()
        batch_metrics = self._metrics.batch_observer(manifest.name, manifest.version)
        runner = BatchRunner(
            f"{manifest.name}-v{manifest.version}",
            runtime,
            manifest.item_shape,
            np.dtype(manifest.input.dtype),
            batching,
            metrics=batch_metrics,
        )
        instance = ModelInstance(
            manifest,
            version.path,
            runner,
            batching,
            runtime=choose_runtime(manifest, self._runtime_options.preferred_runtime),
            clock=self._clock,
            metrics=batch_metrics,
            results=self._cached_results(version),
            release_timeout_s=self._release_timeout_s,
        )
        try:
            await instance.warm_up()
        except BaseException:
            await instance.close(drain_timeout=0)  # its threads and runtime must not outlive it
            raise
        return instance

    def _cached_results(self, version: ModelVersion) -> CachedResults | None:
        config = version.config.cache
        if config is None:
            return None
        name, number = version.manifest.name, version.manifest.version
        return CachedResults(
            name,
            number,
            ResultCache(config.max_entries, config.max_bytes),
            hits=self._metrics.cache.labels(name, str(number), "hit"),
            misses=self._metrics.cache.labels(name, str(number), "miss"),
        )

    async def reload(self, only: str | None = None) -> None:
        """Bring the served versions in line with the repository (or one model of it)."""
        async with self._lock:
            try:
                # Listing folders and parsing manifests is file I/O: keep the event loop answering.
                scan = await asyncio.to_thread(scan_repository, self._repository)
            except Exception as exc:
                self._repository_error = f"{type(exc).__name__}: {exc}"
                log.exception("cannot read the model repository")
                return
            self._repository_error = None
            if only and only not in scan.versions and only not in scan.errors:
                raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"no model named {echo(only)} in the repository")
            everything = set(scan.versions) | set(scan.errors) | set(self._serving) | set(self._errors)
            try:
                for name in [only] if only else sorted(everything):
                    await self._update(name, scan)
            finally:
                self._on_change()

    async def _update(self, name: str, scan: RepositoryScan) -> None:
        problems = scan.errors.get(name, [])
        if name in scan.versions:
            problems = problems + await self._reconcile(name, scan.versions[name], keep_current=bool(problems))
        elif not problems:
            await self._reconcile(name, [], keep_current=False)  # gone from the repository
        # Else its config.json is broken, so its version policy is unknown: what it serves stays.
        self._report(name, problems)

    def _report(self, name: str, problems: list[str]) -> None:
        error = "; ".join(problems)
        if error and error != self._errors.get(name):
            log.warning("model %s: %s", name, error)  # once per change, not on every poll
        if error:
            self._errors[name] = error
        else:
            self._errors.pop(name, None)

    async def _reconcile(self, name: str, wanted: list[ModelVersion], keep_current: bool) -> list[str]:
        """Serve ``wanted``; return why versions failed to load.

        With nothing new loaded, ``keep_current`` (the repository reports a problem) or a failed
        load keeps what the model serves: a broken update must not take a model down.
        """
        current = self._serving.get(name, {})
        updated = {v: m for v, m in current.items() if v in {w.manifest.version for w in wanted}}
        failed = []
        for version in wanted:
            number = version.manifest.version
            if number in updated:
                continue
            try:
                updated[number] = await self._load(version)
                log.info("model %s v%d now serving", name, number)
            except Exception as exc:
                failed.append(f"v{number}: {type(exc).__name__}: {exc}")
                log.exception("model %s v%d failed to load", name, number)
        if not updated and current and (failed or keep_current):
            return failed  # nothing new could load: keep serving what we had
        # One assignment: every request from here on sees the new set of versions.
        if updated:
            self._serving[name] = updated
        else:
            self._serving.pop(name, None)
        self._on_change()
        retired = [m for v, m in current.items() if updated.get(v) is not m]
        await asyncio.gather(*(m.close(self._drain_timeout_s) for m in retired))
        return failed

    async def unload(self, name: str) -> None:
        async with self._lock:
            versions = self._serving.pop(name, None)
            if versions is None:
                raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"model {echo(name)} is not loaded")
            self._on_change()
            await asyncio.gather(*(m.close(self._drain_timeout_s) for m in versions.values()))

    def get(self, name: str, version: int | None = None) -> ModelInstance:
        return pick_version(self._serving.get(name, {}), name, version, self._loaded_once)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.gather(*(m.close(self._drain_timeout_s) for m in self.models))
            self._serving.clear()
            self._on_change()


def _artifact_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
