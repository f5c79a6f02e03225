"""The seam between serving logic and model execution: what the service and the routes may
know of a model and of the set of models.

``ModelRegistry`` and ``ModelInstance`` are one implementation, in this process. Another (a
model process behind IPC, a remote shard) only has to provide these two interfaces.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import numpy as np

from batching import BatchingConfig
from model_contract.errors import ErrorKind, ServiceError, echo
from model_contract.manifest import ModelManifest
from model_contract.preprocess import PreprocessSpec

Compute = Callable[[], Awaitable[np.ndarray]]
Offload = Callable[[Callable[[], bytes]], Awaitable[bytes]]
"""Runs a call off the event loop and returns its result."""
OnStart = Callable[[float], None]


class ServedModel(Protocol):
    """One served version of a model."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def manifest(self) -> ModelManifest: ...

    @property
    def preprocessing(self) -> PreprocessSpec:
        """How an encoded image becomes this model's input tensor."""
        ...

    @property
    def ready(self) -> bool:
        """Warmed up and taking traffic."""
        ...

    @property
    def runtime(self) -> str:
        """The runtime that serves this version (not necessarily the manifest's own)."""
        ...

    @property
    def batching(self) -> BatchingConfig:
        """How this version batches (its model's config.json over the server's settings)."""
        ...

    @property
    def max_queue_size(self) -> int:
        """Most images queued for the model; a request with more can never be admitted."""
        ...

    @property
    def max_batch_size(self) -> int: ...

    async def infer_many(
        self,
        tensors: Sequence[np.ndarray],
        deadline: float | None,
        on_start: OnStart | None = None,
        priority: int = 0,
    ) -> list[np.ndarray]:
        """One output per input tensor, in order. ``deadline`` is on the clock the app was given.
        ``on_start`` is told (on that clock) when the tensors' batch starts running, for tracing.
        ``priority``: 0 for requests a client waits on; higher for background work (jobs), which
        runs only when nothing more urgent waits.

        Raises the batcher's errors (``Overloaded``, ``DeadlineExceeded``, ``BatcherClosed`` when
        this version was retired, ...) or what the runtime raised for one of the tensors.
        """
        ...

    async def remembered(self, encoded: bytes, compute: Compute, offload: Offload) -> np.ndarray:
        """The output for one encoded image: a stored one when this version caches results and
        has seen these bytes, else ``compute()``'s (decode and infer), which is then stored.
        Hashing a large image is CPU work: it runs through ``offload`` (the caller's work pool,
        which charges it to the client)."""
        ...


class ModelCatalog(Protocol):
    """The served models, and the operations that change which ones are served."""

    @property
    def models(self) -> Sequence[ServedModel]:
        """Every served version."""
        ...

    @property
    def ready(self) -> bool:
        """Some model is served, and every served version is ready."""
        ...

    @property
    def errors(self) -> Mapping[str, str]:
        """Per model, why it or some of its versions do not serve ("repository": unreadable)."""
        ...

    @property
    def failed_models(self) -> list[str]:
        """The models with an error, without the reasons (which may name paths)."""
        ...

    @property
    def repository_readable(self) -> bool: ...

    def get(self, name: str, version: int | None = None) -> ServedModel:
        """A ready version (the newest when ``version`` is None), or a ``ServiceError``."""
        ...

    async def reload(self, only: str | None = None) -> None:
        """Bring the served versions in line with the repository, or one model of it."""
        ...

    async def unload(self, name: str) -> None: ...


class ModelBackend(Protocol):
    """Where the models are, with the lifecycle the app runs: in this process
    (``server.local_models.LocalModels``) or in the model-owner process
    (``server.ipc.remote.RemoteCatalog``)."""

    @property
    def catalog(self) -> ModelCatalog: ...

    async def start(self) -> None:
        """Begin loading (or connecting) in the background; returns within seconds."""
        ...

    async def close(self) -> None: ...


M = TypeVar("M", bound=ServedModel)


def pick_version(versions: Mapping[int, M], name: str, version: int | None, loaded_once: bool) -> M:
    """The ready version a request asked for (the newest when ``version`` is None), or why
    not: one rule, whichever process holds the models."""
    if not versions:
        if not loaded_once:
            raise ServiceError(ErrorKind.NOT_READY, "models are still loading", retry_after=1)
        raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"no model named {echo(name)}")
    if version is None:
        model = versions[max(versions)]
    elif version in versions:
        model = versions[version]
    else:
        raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"model {echo(name)} has no loaded version {version}")
    if not model.ready:
        raise ServiceError(ErrorKind.NOT_READY, f"model {echo(name)} is warming up", retry_after=1)
    return model
