"""The service: the one protocol-neutral surface every route calls (like MLServer's DataPlane).

Inference (classify, classify many, infer on tensors or encoded images), a model's description,
readiness, and the repository operations. It knows models only through the ``ModelCatalog``
and ``ServedModel`` interfaces (``server/serving.py``), never how or where they run.

A request's images are admitted (counted against the per-request and in-progress limits)
before any is decoded. Decoding runs on the work pool (CPU work; Pillow releases the GIL),
then the tensors go to the model; top-k is taken from the probabilities it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Awaitable, Callable, Sequence, TypeVar, Union

import numpy as np

from batching import BatcherClosed, BatchingConfig, BatchingError
from batching.clock import Clock
from model_contract.errors import ErrorKind, ServiceError, echo
from model_contract.imaging import image_to_tensor
from model_contract.manifest import ModelManifest, version_number
from server.admission import Admission
from server.errors import from_batching_error
from server.metrics import Metrics
from server.model_statistics import ModelStatistics, read_statistics
from server.serving import ModelCatalog, ServedModel
from server.settings import LimitSettings
from server.top_k import Prediction, check_top_k, top_k
from server.tracing import Tracing
from server.work_pool import WorkPool

log = logging.getLogger(__name__)

T = TypeVar("T")

# A megabyte of JSON numbers takes about 25 ms to parse and convert, all of it holding the GIL.
# Long strings (base64 images) and binary tensors parse about as fast as they copy.
ISOLATE_FROM_BYTES = 1024 * 1024
_SAMPLE_BYTES = 64 * 1024
# A 4 KB body parses and converts in well under 0.1 ms, whatever it holds (measured: a v2 JSON
# tensor of 192 numbers, 20 us); a thread hop costs more CPU than that.
PARSE_ON_LOOP_BYTES = 4 * 1024


def _mostly_numbers(json: bytes) -> bool:
    """Whether a JSON body is dense with values (a comma every 20 bytes or closer), judged from
    two samples, so that deciding never scans megabytes on the event loop."""
    middle = len(json) // 2
    sample = json[:_SAMPLE_BYTES] + json[middle : middle + _SAMPLE_BYTES]
    return sample.count(b",") * 20 >= len(sample)


@dataclass(frozen=True)
class Classification:
    model: str
    version: int
    predictions: list[Prediction]

    def as_dict(self) -> dict[str, Any]:
        """As ``/v1/classify`` answers it (and a job's result for one image)."""
        best = self.predictions[0]
        return {
            "model": self.model,
            "version": self.version,
            "class": best.label,
            "confidence": best.score,
            "predictions": [{"label": p.label, "index": p.index, "score": p.score} for p in self.predictions],
        }


ItemOutcome = Union[Classification, ServiceError]


@dataclass(frozen=True)
class ModelDescription:
    """One served version, as every protocol describes it."""

    name: str
    version: int
    ready: bool
    runtime: str
    """The runtime actually serving it."""
    manifest: ModelManifest
    batching: BatchingConfig
    max_images: int
    """Most images one request may carry; more are refused (413), not queued."""

    @property
    def max_batch_size(self) -> int:
        return self.batching.max_batch_size


@dataclass(frozen=True)
class Inference:
    model: ModelDescription
    outputs: np.ndarray
    """The model's output rows, one per image."""
    classes: list[list[Prediction]]
    """Per row, the top k asked for, best first (empty when none was)."""


@dataclass(frozen=True)
class Readiness:
    ready: bool
    """Every served version warm, and the server not draining."""
    draining: bool
    models: dict[str, bool]
    failed: list[str]
    repository_readable: bool


@dataclass(frozen=True)
class RepositoryIndex:
    served: list[ModelDescription]
    errors: Mapping[str, str]
    """Per model, why it or some of its versions do not serve."""


class ClassificationService:
    def __init__(
        self,
        catalog: ModelCatalog,
        admission: Admission,
        pool: WorkPool,
        metrics: Metrics,
        clock: Clock,
        tracing: Tracing | None = None,
    ) -> None:
        self._catalog = catalog
        self._tracing = tracing or Tracing()
        self._draining = False
        self._metrics = metrics
        self._decoded = metrics.images_decoded
        self._admission = admission
        self._limits = admission.limits
        self._decode_limits = admission.limits.decode_limits()
        self._pool = pool
        # The models' batchers run on this clock too: a deadline computed here is compared there.
        self._clock = clock

    @property
    def limits(self) -> LimitSettings:
        return self._limits

    # Models, readiness and the repository.

    def _describe(self, model: ServedModel) -> ModelDescription:
        return ModelDescription(
            name=model.name,
            version=model.version,
            ready=model.ready,
            runtime=model.runtime,
            manifest=model.manifest,
            batching=model.batching,
            max_images=self._admission.max_images(model.max_queue_size),
        )

    def model(self, name: str, version: str | None = None) -> ModelDescription:
        """A ready served version, the newest unless ``version`` (as a URL gives it) says which."""
        if version is None:
            return self._describe(self._catalog.get(name))
        return self._describe(self._catalog.get(name, self._version_number(name, version)))

    @staticmethod
    def _version_number(name: str, version: str) -> int:
        number = version_number(version)
        if number is None:
            raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"model {echo(name)} has no version {echo(version)}")
        return number

    def models(self) -> list[ModelDescription]:
        return [self._describe(m) for m in self._catalog.models]

    def readiness(self) -> Readiness:
        catalog = self._catalog
        return Readiness(
            ready=catalog.ready and not self._draining,
            draining=self._draining,
            models={m.name: m.ready for m in catalog.models},
            failed=catalog.failed_models,
            repository_readable=catalog.repository_readable,
        )

    def drain(self) -> None:
        """The server is going away: from now on it says it is not ready (load balancers stop
        sending), while it still serves what comes."""
        self._draining = True

    def repository_index(self) -> RepositoryIndex:
        return RepositoryIndex(self.models(), dict(self._catalog.errors))

    async def statistics(self, name: str | None = None, version: str | None = None) -> list[ModelStatistics]:
        """Per served version, Triton's statistics (``server/model_statistics.py``): of one version,
        of every served version of ``name``, or of every model (``name`` None)."""
        if name is None:
            served = list(self._catalog.models)
        elif version is not None:
            served = [self._catalog.get(name, self._version_number(name, version))]
        else:
            served = [m for m in self._catalog.models if m.name == name]
            if not served:
                self._catalog.get(name)  # why not: not found, or still loading
        versions = [(m.name, m.version) for m in served]
        # Merging the metrics of every process is file I/O: off the event loop.
        return await self._pool.run(lambda: read_statistics(self._metrics.collect(), versions))

    async def load(self, name: str) -> str | None:
        """Rescan this model's folder now: load new versions, retire removed ones. Returns why
        the model (or a version of it) does not serve, if it does not."""
        if not name:
            raise ServiceError(ErrorKind.BAD_REQUEST, "name the model to load")
        await self._catalog.reload(only=name)
        return self._catalog.errors.get(name)

    async def unload(self, name: str) -> None:
        if not name:
            raise ServiceError(ErrorKind.BAD_REQUEST, "name the model to unload")
        await self._catalog.unload(name)

    # Inference.

    async def offload(
        self, call: Callable[[], T], json: bytes = b"", body_bytes: int | None = None, *, isolate: bool | None = None
    ) -> T:
        """A request's CPU work (parsing ``json``, converting tensors), off the event loop: in a
        thread, or, for a megabyte or more of JSON numbers, in a worker process (``call`` must
        then be picklable), where holding the GIL for long costs the server nothing. A body of
        ``PARSE_ON_LOOP_BYTES`` or less (``body_bytes``, the JSON and any binary part) is parsed
        on the loop: that takes microseconds, less than the hop to a thread and back.
        ``isolate`` decides for bodies that are not JSON (a gRPC message's typed numbers)."""
        if (len(json) if body_bytes is None else body_bytes) <= PARSE_ON_LOOP_BYTES:
            return self._pool.run_here(call)
        if isolate is None:
            isolate = len(json) >= ISOLATE_FROM_BYTES and _mostly_numbers(json)
        if isolate:
            return await self._pool.run_isolated(call)
        return await self._pool.run(call)

    def check_top_k(self, k: int) -> None:
        """The one check of a client's top-k, whichever protocol it came in."""
        check_top_k(k, self._limits.max_top_k)

    def _decode(self, model: ServedModel, data: bytes) -> np.ndarray:
        """On a pool thread: one image to the model's input tensor."""
        try:
            tensor = image_to_tensor(data, model.preprocessing, self._decode_limits)
        except ServiceError:
            self._decoded.labels(model.name, str(model.version), "refused").inc()
            raise
        self._decoded.labels(model.name, str(model.version), "ok").inc()
        return tensor

    def _decode_outcome(self, model: ServedModel, data: bytes) -> np.ndarray | ServiceError:
        """For per-image answers: a bad image is this image's outcome, not the request's failure."""
        try:
            return self._decode(model, data)
        except ServiceError as exc:
            return exc

    async def _decode_all(self, model: ServedModel, images: Sequence[bytes]) -> list[np.ndarray]:
        """All or nothing: the first bad image withdraws its siblings' decodes."""
        with self._tracing.span("decode"):
            return await self._pool.run_all([partial(self._decode, model, data) for data in images])

    async def _decode_each(self, model: ServedModel, images: Sequence[bytes]) -> list[np.ndarray | ServiceError]:
        with self._tracing.span("decode"):
            return await self._pool.run_all([partial(self._decode_outcome, model, data) for data in images])

    async def _run(
        self, model: ServedModel, tensors: Sequence[np.ndarray], deadline: float, priority: int = 0
    ) -> list[np.ndarray]:
        """The model's outputs for ``tensors``; traced as the time queued, then the batch's run."""
        if not self._tracing.enabled:
            return await model.infer_many(tensors, deadline, priority=priority)
        submitted, starts = self._clock.now(), list[float]()
        try:
            return await model.infer_many(tensors, deadline, on_start=starts.append, priority=priority)
        finally:
            ended = self._clock.now()
            started = min(starts, default=ended)
            what = {"imgserve.model": model.name, "imgserve.version": model.version, "imgserve.images": len(tensors)}
            self._tracing.record("queue", submitted, started, self._clock, what)
            if starts:
                self._tracing.record("batch", started, ended, self._clock, what)

    @contextmanager
    def _model_errors(self, model: ServedModel) -> Iterator[None]:
        """Batcher errors to their service kinds; a runtime failure (which the batcher has
        already narrowed to this image by bisecting) to a logged internal error."""
        try:
            yield
        except BatcherClosed:
            raise  # the version was retired under us: _on_model retries on its replacement
        except ServiceError:
            raise  # already the service's own (the model process is away, say)
        except BatchingError as exc:
            raise from_batching_error(exc) from exc
        except Exception as exc:
            log.exception("model %s failed on an image", model.name)
            raise ServiceError(ErrorKind.INTERNAL, f"the model failed on this image: {type(exc).__name__}") from exc

    async def _on_model(self, name: str, version: int | None, work: Callable[[ServedModel], Awaitable[T]]) -> T:
        """Run ``work`` on the serving version. If a reload retired that version while this
        request was on its way, run it once more on the one that replaced it: a reload
        must not fail requests."""
        model = self._catalog.get(name, version)
        started, outcome = time.perf_counter(), "failure"
        try:
            try:
                result = await work(model)
            except BatcherClosed as exc:
                replacement = self._catalog.get(name, version)
                if replacement is model:
                    raise from_batching_error(exc) from exc
                model = replacement
                try:
                    result = await work(replacement)
                except BatcherClosed as exc:
                    raise from_batching_error(exc) from exc
            outcome = "success"
            return result
        finally:
            # The statistics extension's success and fail counts (server/model_statistics.py).
            requests = self._metrics.inference_requests.labels(model.name, str(model.version), outcome)
            requests.observe(time.perf_counter() - started)

    def _classification(self, model: ServedModel, probabilities: np.ndarray, k: int) -> Classification:
        return Classification(model.name, model.version, top_k(probabilities, k, model.manifest.labels))

    def _deadline(self, timeout_s: float | None) -> float:
        """A client may shorten the server's deadline, never lengthen it."""
        budget = self._limits.request_timeout_s if timeout_s is None else min(timeout_s, self._limits.request_timeout_s)
        return self._clock.now() + budget

    async def classify(self, data: bytes, *, model_name: str, k: int, timeout_s: float | None = None) -> Classification:
        """One encoded image's top ``k`` classes. A result cache hit skips decode and model."""
        self.check_top_k(k)
        deadline = self._deadline(timeout_s)

        async def work(model: ServedModel) -> Classification:
            async def decode_and_infer() -> np.ndarray:
                with self._admission.images_held(1, model.max_queue_size):
                    (tensor,) = await self._decode_all(model, [data])
                    with self._model_errors(model):
                        (probabilities,) = await self._run(model, [tensor], deadline)
                return probabilities

            return self._classification(model, await model.remembered(data, decode_and_infer, self._pool.run), k)

        return await self._on_model(model_name, None, work)

    async def infer(
        self,
        *,
        model_name: str,
        version: int | None = None,
        tensors: Sequence[np.ndarray] | None = None,
        encoded: Sequence[bytes] | None = None,
        timeout_s: float | None = None,
        top_k: int | None = None,
    ) -> Inference:
        """Model outputs for a batch of ready tensors, or of encoded images to decode first,
        and each row's ``top_k`` classes when asked (checked before any work). All or nothing:
        one bad image fails the request (the protocols' semantics)."""
        count = len(encoded) if encoded is not None else len(tensors or [])
        if count == 0:
            raise ServiceError(ErrorKind.BAD_REQUEST, "the batch is empty")
        if top_k is not None:
            self.check_top_k(top_k)
        deadline = self._deadline(timeout_s)

        async def work(model: ServedModel) -> Inference:
            with self._admission.images_held(count, model.max_queue_size):
                batch = await self._decode_all(model, encoded) if encoded is not None else list(tensors or [])
                shape, dtype = model.manifest.item_shape, np.dtype(model.manifest.input.dtype)
                if any(t.shape != shape or t.dtype != dtype for t in batch):
                    raise ServiceError(
                        ErrorKind.INVALID_PARAMETER, f"each image must be {dtype} of shape {list(shape)}"
                    )
                with self._model_errors(model):
                    rows = await self._run(model, batch, deadline)
            classes = [] if top_k is None else [self._classification(model, row, top_k).predictions for row in rows]
            return Inference(self._describe(model), np.stack(rows), classes)

        return await self._on_model(model_name, version, work)

    async def classify_many(
        self,
        images: Sequence[bytes],
        *,
        model_name: str,
        k: int,
        timeout_s: float | None = None,
        priority: int = 0,
    ) -> list[ItemOutcome]:
        """Per-item outcomes in order: a bad image gets its own error, the others their
        classes. Failures of the server itself (overload, timeout) fail the whole request.
        ``priority`` above 0: background work (a job's images), run when no request waits."""
        self.check_top_k(k)
        deadline = self._deadline(timeout_s)

        async def work(model: ServedModel) -> list[ItemOutcome]:
            with self._admission.images_held(len(images), model.max_queue_size):
                return await self._classify_decoded(model, images, deadline, k, priority)

        return await self._on_model(model_name, None, work)

    async def _classify_decoded(
        self, model: ServedModel, images: Sequence[bytes], deadline: float, k: int, priority: int = 0
    ) -> list[ItemOutcome]:
        decoded = await self._decode_each(model, images)
        tensors = [t for t in decoded if not isinstance(t, ServiceError)]
        # Admitted all or none, queued back to back: a request larger than a batch is cut
        # across consecutive batches and its answers come back in order.
        rows: list[np.ndarray] = []
        if tensors:
            with self._model_errors(model):
                rows = await self._run(model, tensors, deadline, priority)
        answers = iter(rows)
        return [
            item if isinstance(item, ServiceError) else self._classification(model, next(answers), k)
            for item in decoded
        ]
