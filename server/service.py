"""Classification as a service: image bytes in, top-k classes out. No HTTP in here.

Decoding runs on a thread pool (it is CPU work and Pillow releases the GIL), then the
tensor goes to the model's batcher; top-k is taken from the probabilities it returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from batching import BatchingError
from server.errors import ErrorKind, ServiceError, from_batching_error
from server.imaging import PreprocessSpec, image_to_tensor
from server.model_instance import ModelInstance
from server.registry import ModelRegistry
from server.settings import LimitSettings

log = logging.getLogger(__name__)


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

    def _check_top_k(self, k: int) -> None:
        if not 1 <= k <= self._limits.max_top_k:
            raise ServiceError(ErrorKind.INVALID_PARAMETER, f"top_k must be between 1 and {self._limits.max_top_k}")

    async def _decode(self, model: ModelInstance, data: bytes) -> np.ndarray:
        p = model.manifest.preprocessing
        spec = PreprocessSpec(p.resize_shorter_side, p.crop_size, p.interpolation)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decode_pool, image_to_tensor, data, spec, self._limits.max_image_pixels)

    async def _infer(self, model: ModelInstance, tensor: np.ndarray, deadline: float, k: int) -> Classification:
        try:
            probabilities = await model.infer(tensor, deadline)
        except BatchingError as exc:
            raise from_batching_error(exc) from exc
        except Exception as exc:
            # The runtime failed on this image even alone (the batcher has bisected already).
            log.exception("model %s failed on an image", model.name)
            raise ServiceError(ErrorKind.INTERNAL, f"the model failed on this image: {type(exc).__name__}") from exc
        return Classification(model.name, model.version, top_k(probabilities, k, model.manifest.labels))

    def _deadline(self) -> float:
        # The batcher's clock is time.monotonic; deadlines are on the same scale.
        return time.monotonic() + self._limits.request_timeout_s

    async def classify(self, data: bytes, *, model_name: str, k: int) -> Classification:
        self._check_top_k(k)
        model = self._registry.get(model_name)
        deadline = self._deadline()
        tensor = await self._decode(model, data)
        return await self._infer(model, tensor, deadline, k)

    async def classify_many(self, images: Sequence[bytes], *, model_name: str, k: int) -> list[ItemOutcome]:
        """Per-item outcomes in order: a bad image gets its own error, the others their
        classes. Failures of the server itself (overload, timeout) fail the whole request."""
        self._check_top_k(k)
        model = self._registry.get(model_name)
        deadline = self._deadline()
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
        tasks = [asyncio.ensure_future(self._infer(model, tensor, deadline, k)) for _, tensor in tensors]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        for (i, _), result in zip(tensors, results, strict=True):
            outcomes[i] = result
        return [o for o in outcomes if o is not None]
