"""Classification as a service: image bytes in, top-k classes out. No HTTP in here.

Decoding runs on a thread pool (it is CPU work and Pillow releases the GIL), then the
tensor goes to the model's batcher; top-k is taken from the probabilities it returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence, TypeVar, Union

import numpy as np

from batching import BatcherClosed, BatchingError
from server.errors import ErrorKind, ServiceError, from_batching_error
from server.imaging import DecodeLimits, image_to_tensor
from server.model_instance import ModelInstance
from server.registry import ModelRegistry
from server.settings import LimitSettings

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Classification:
    model: str
    version: int
    predictions: list[Prediction]


ItemOutcome = Union[Classification, ServiceError]


def top_k(probabilities: np.ndarray, k: int, labels: Sequence[str]) -> list[Prediction]:
    k = min(k, probabilities.shape[-1])
    candidates = np.argpartition(probabilities, -k)[-k:]
    ranked = candidates[np.argsort(-probabilities[candidates], kind="stable")]
    return [Prediction(labels[i], int(i), float(probabilities[i])) for i in ranked]


class ClassificationService:
    def __init__(self, registry: ModelRegistry, limits: LimitSettings, decode_pool: ThreadPoolExecutor) -> None:
        self._registry = registry
        self._limits = limits
        self._decode_pool = decode_pool
        self._in_progress = 0

    @contextmanager
    def _admitted(self) -> Iterator[None]:
        """Refuse at once past ``max_requests_in_progress``: when decoding, not the model,
        is the bottleneck, requests would otherwise pile up in front of the decode threads."""
        if self._in_progress >= self._limits.max_requests_in_progress:
            raise ServiceError(ErrorKind.OVERLOADED, "server overloaded: too many requests in progress", retry_after=1)
        self._in_progress += 1
        try:
            yield
        finally:
            self._in_progress -= 1

    def _check_top_k(self, k: int) -> None:
        if not 1 <= k <= self._limits.max_top_k:
            raise ServiceError(ErrorKind.INVALID_PARAMETER, f"top_k must be between 1 and {self._limits.max_top_k}")

    async def _decode(self, model: ModelInstance, data: bytes) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._decode_pool, image_to_tensor, data, model.preprocess, DecodeLimits.from_limits(self._limits)
        )

    @contextmanager
    def _model_errors(self, model: ModelInstance) -> Iterator[None]:
        """Batcher errors to their service kinds; a runtime failure (which the batcher has
        already narrowed to this image by bisecting) to a logged internal error."""
        try:
            yield
        except BatcherClosed:
            raise  # the version was retired under us: _on_model retries on its replacement
        except BatchingError as exc:
            raise from_batching_error(exc) from exc
        except Exception as exc:
            log.exception("model %s failed on an image", model.name)
            raise ServiceError(ErrorKind.INTERNAL, f"the model failed on this image: {type(exc).__name__}") from exc

    async def _on_model(self, name: str, version: int | None, work: Callable[[ModelInstance], Awaitable[T]]) -> T:
        """Run ``work`` on the serving version. If a reload retired that version while this
        request was on its way, run it once more on the one that replaced it: a reload
        must not fail requests."""
        model = self._registry.get(name, version)
        try:
            return await work(model)
        except BatcherClosed as exc:
            replacement = self._registry.get(name, version)
            if replacement is model:
                raise from_batching_error(exc) from exc
        try:
            return await work(replacement)
        except BatcherClosed as exc:
            raise from_batching_error(exc) from exc

    def _classification(self, model: ModelInstance, probabilities: np.ndarray, k: int) -> Classification:
        return Classification(model.name, model.version, top_k(probabilities, k, model.manifest.labels))

    def _deadline(self, timeout_s: float | None) -> float:
        """A client may shorten the server's deadline, never lengthen it."""
        budget = self._limits.request_timeout_s if timeout_s is None else min(timeout_s, self._limits.request_timeout_s)
        # The batcher's clock is time.monotonic; deadlines are on the same scale.
        return time.monotonic() + budget

    async def classify(self, data: bytes, *, model_name: str, k: int, timeout_s: float | None = None) -> Classification:
        self._check_top_k(k)
        deadline = self._deadline(timeout_s)

        async def work(model: ModelInstance) -> Classification:
            key = model.cache_key(data)
            probabilities = model.cached(key)
            if probabilities is None:
                tensor = await self._decode(model, data)
                with self._model_errors(model):
                    probabilities = await model.infer(tensor, deadline)
                model.remember(key, probabilities)
            return self._classification(model, probabilities, k)

        with self._admitted():
            return await self._on_model(model_name, None, work)

    async def infer(
        self,
        *,
        model_name: str,
        version: int | None = None,
        tensors: Sequence[np.ndarray] | None = None,
        encoded: Sequence[bytes] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[ModelInstance, np.ndarray]:
        """Model outputs for a batch of ready tensors, or of encoded images to decode first.
        All or nothing: one bad image fails the request (the protocols' semantics)."""
        deadline = self._deadline(timeout_s)

        async def work(model: ModelInstance) -> tuple[ModelInstance, np.ndarray]:
            batch = list(tensors or [])
            if encoded is not None:
                batch = list(await asyncio.gather(*(self._decode(model, data) for data in encoded)))
            if not batch:
                raise ServiceError(ErrorKind.BAD_REQUEST, "the batch is empty")
            shape, dtype = model.manifest.item_shape, np.dtype(model.manifest.input.dtype)
            if any(t.shape != shape or t.dtype != dtype for t in batch):
                raise ServiceError(ErrorKind.INVALID_PARAMETER, f"each image must be {dtype} of shape {list(shape)}")
            with self._model_errors(model):
                rows = await model.infer_many(batch, deadline)
            return model, np.stack(rows)

        with self._admitted():
            return await self._on_model(model_name, version, work)

    async def classify_many(
        self, images: Sequence[bytes], *, model_name: str, k: int, timeout_s: float | None = None
    ) -> list[ItemOutcome]:
        """Per-item outcomes in order: a bad image gets its own error, the others their
        classes. Failures of the server itself (overload, timeout) fail the whole request."""
        self._check_top_k(k)
        deadline = self._deadline(timeout_s)

        async def work(model: ModelInstance) -> list[ItemOutcome]:
            return await self._classify_decoded(model, images, deadline, k)

        with self._admitted():
            return await self._on_model(model_name, None, work)

    async def _classify_decoded(
        self, model: ModelInstance, images: Sequence[bytes], deadline: float, k: int
    ) -> list[ItemOutcome]:
        decoded = await asyncio.gather(*(self._decode(model, data) for data in images), return_exceptions=True)
        outcomes: list[ItemOutcome | None] = []
        tensors: list[tuple[int, np.ndarray]] = []
        for i, item in enumerate(decoded):
            if isinstance(item, ServiceError):
                outcomes.append(item)
            elif isinstance(item, BaseException):
                raise item
            else:
                outcomes.append(None)
                tensors.append((i, item))
        # Admitted all or none, queued back to back: a request larger than a batch is cut
        # across consecutive batches and its answers come back in order.
        with self._model_errors(model):
            rows = await model.infer_many([tensor for _, tensor in tensors], deadline)
        for (i, _), probabilities in zip(tensors, rows, strict=True):
            outcomes[i] = self._classification(model, probabilities, k)
        return [o for o in outcomes if o is not None]
