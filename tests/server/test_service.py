"""The service on its own: a fake catalog of fake served models (a real micro-batcher over a
runner the test holds), a manual clock, no HTTP and no real model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from model_contract.errors import ErrorKind, ServiceError
from server.admission import Admission
from server.metrics import Metrics
from server.result_cache import CachedResults, ResultCache
from server.service import Classification, ClassificationService
from server.settings import LimitSettings
from server.work_pool import WorkPool
from tests.fakes import FakeCatalog, FakeModel, ManualClock, fake_manifest, settle
from tests.helpers import png, until

MAX_TOP_K = 20


def tensor(value: int) -> np.ndarray:
    return np.full((8, 8, 3), value, np.uint8)


@dataclass
class Setup:
    service: ClassificationService
    catalog: FakeCatalog
    metrics: Metrics
    clock: ManualClock

    def decoded(self, model: str = "m") -> float:
        sample = self.metrics.registry.get_sample_value
        return sum(
            sample("imgserve_images_decoded_total", {"model": model, "version": "1", "outcome": o}) or 0
            for o in ("ok", "refused")
        )


@asynccontextmanager
async def serving(
    *models: Callable[[ManualClock, Metrics], FakeModel], catalog: type[FakeCatalog] = FakeCatalog, **limits: Any
) -> AsyncIterator[Setup]:
    """The service over a catalog of the given models (each built on the test's clock)."""
    clock, metrics, pool = ManualClock(), Metrics(), WorkPool(threads=2)
    built = [make(clock, metrics) for make in models]
    catalog_of_models = catalog(*built)
    admission = Admission(LimitSettings(max_top_k=MAX_TOP_K, **limits))
    try:
        service = ClassificationService(catalog_of_models, admission, pool, metrics, clock)
        yield Setup(service, catalog_of_models, metrics, clock)
    finally:
        for model in built:
            await model.retire()
        await asyncio.to_thread(pool.shutdown)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    """A safety net only: a scenario that would wait forever (a broken deadline) fails instead."""
    asyncio.run(asyncio.wait_for(scenario, timeout=10))


def model(version: int = 1, **options: Any) -> Callable[[ManualClock, Metrics], FakeModel]:
    return lambda clock, metrics: FakeModel(fake_manifest(version=version), clock, **options)


def cached_model(clock: ManualClock, metrics: Metrics) -> FakeModel:
    hits, misses = metrics.cache.labels("m", "1", "hit"), metrics.cache.labels("m", "1", "miss")
    results = CachedResults("m", 1, ResultCache(max_entries=10, max_bytes=100_000), hits, misses)
    return FakeModel(fake_manifest(), clock, results=results)


def test_classify_answers_the_top_k_classes_best_first() -> None:
    async def scenario() -> None:
        async with serving(model()) as s:
            result = await s.service.classify(png(3), model_name="m", k=2)
            assert (result.model, result.version) == ("m", 1)
            assert [(p.label, p.index, p.score) for p in result.predictions] == [
                ("class3", 3, 0.75),
                ("class4", 4, 0.25),
            ]

    run(scenario())


def test_classify_many_gives_a_bad_image_its_own_error_and_the_others_their_classes() -> None:
    async def scenario() -> None:
        async with serving(model()) as s:
            (served,) = s.catalog.serving
            outcomes = await s.service.classify_many([png(1), b"not an image", png(2)], model_name="m", k=1)
            first, bad, last = outcomes
            assert isinstance(first, Classification) and first.predictions[0].label == "class1"
            assert isinstance(bad, ServiceError) and bad.kind is ErrorKind.INVALID_IMAGE
            assert isinstance(last, Classification) and last.predictions[0].label == "class2"
            assert served.batches == [2]  # only the good images reached the model, together

    run(scenario())


def test_infer_with_tensors_returns_every_rows_outputs_and_classes() -> None:
    async def scenario() -> None:
        async with serving(model(runtime="litert")) as s:
            inference = await s.service.infer(model_name="m", tensors=[tensor(1), tensor(2), tensor(3)], top_k=2)
            assert inference.outputs.shape == (3, 10) and inference.outputs.argmax(axis=1).tolist() == [1, 2, 3]
            assert [[p.label for p in row] for row in inference.classes] == [
                ["class1", "class2"],
                ["class2", "class3"],
                ["class3", "class4"],
            ]
            assert (inference.model.name, inference.model.version, inference.model.runtime) == ("m", 1, "litert")
            without_classes = await s.service.infer(model_name="m", tensors=[tensor(1)])
            assert without_classes.classes == []

    run(scenario())


def test_infer_refuses_tensors_the_model_cannot_take_before_running_it() -> None:
    async def scenario() -> None:
        async with serving(model()) as s:
            (served,) = s.catalog.serving
            with pytest.raises(ServiceError) as wrong:
                await s.service.infer(model_name="m", tensors=[tensor(1), np.zeros((4, 4, 3), np.uint8)])
            assert wrong.value.kind is ErrorKind.INVALID_PARAMETER and "[8, 8, 3]" in wrong.value.message
            with pytest.raises(ServiceError) as empty:
                await s.service.infer(model_name="m", tensors=[])
            assert empty.value.kind is ErrorKind.BAD_REQUEST
            assert served.batches == []

    run(scenario())


@pytest.mark.parametrize("k", [0, MAX_TOP_K + 1])
def test_one_top_k_check_on_every_entry_point_before_any_work(k: int) -> None:
    async def scenario() -> None:
        async with serving(model()) as s:
            (served,) = s.catalog.serving
            calls = [
                lambda: s.service.classify(png(1), model_name="m", k=k),
                lambda: s.service.classify_many([png(1)], model_name="m", k=k),
                lambda: s.service.infer(model_name="m", encoded=[png(1)], top_k=k),
            ]
            messages = set()
            for call in calls:
                with pytest.raises(ServiceError) as refused:
                    await call()
                assert refused.value.kind is ErrorKind.INVALID_PARAMETER
                messages.add(refused.value.message)
            assert messages == {f"top_k must be between 1 and {MAX_TOP_K}"}
            assert s.decoded() == 0 and served.batches == []

    run(scenario())


@pytest.mark.parametrize(("client_timeout_s", "server_timeout_s"), [(0.5, 10.0), (60.0, 0.5), (None, 0.5)])
def test_a_deadline_that_passes_in_the_queue_is_a_timeout_and_never_runs(
    client_timeout_s: float | None, server_timeout_s: float
) -> None:
    """The client may shorten the server's deadline, never lengthen it; both are on the clock
    the models' batchers use."""

    async def scenario() -> None:
        async with serving(model(hold=True, max_batch_size=1), request_timeout_s=server_timeout_s) as s:
            (served,) = s.catalog.serving
            infer = s.service.infer
            # Before the deadline: the queued request runs.
            running = asyncio.ensure_future(infer(model_name="m", tensors=[tensor(1)]))
            await settle()
            in_time = asyncio.ensure_future(infer(model_name="m", tensors=[tensor(2)], timeout_s=client_timeout_s))
            await settle()
            s.clock.advance(0.4)
            served.release()
            await running
            await settle()
            served.release()
            assert (await in_time).outputs.argmax() == 2
            # Past it (0.5 s, the tighter of the two): a timeout, and the model never sees it.
            running = asyncio.ensure_future(infer(model_name="m", tensors=[tensor(3)]))
            await settle()
            late = asyncio.ensure_future(infer(model_name="m", tensors=[tensor(4)], timeout_s=client_timeout_s))
            await settle()
            s.clock.advance(0.6)
            served.release()
            await running
            with pytest.raises(ServiceError) as timed_out:
                await late
            assert timed_out.value.kind is ErrorKind.TIMEOUT
            assert served.batches == [1, 1, 1]

    run(scenario())


def test_a_full_queue_is_overloaded_with_a_retry_after() -> None:
    async def scenario() -> None:
        async with serving(model(hold=True, max_batch_size=1, max_queue_size=2)) as s:
            (served,) = s.catalog.serving
            admitted = []
            for i in range(3):  # one runs, then two wait: the queue is full
                admitted.append(asyncio.ensure_future(s.service.infer(model_name="m", tensors=[tensor(i)])))
                await settle()
            with pytest.raises(ServiceError) as refused:
                await s.service.infer(model_name="m", tensors=[tensor(9)])
            assert refused.value.kind is ErrorKind.OVERLOADED
            assert refused.value.retry_after is not None and refused.value.retry_after > 0
            for _ in range(3):
                await until(lambda: served.runner.waiting == 1)
                served.release()
            assert [(await a).outputs.argmax() for a in admitted] == [0, 1, 2]

    run(scenario())


def test_a_cache_hit_skips_decode_and_the_model() -> None:
    async def scenario() -> None:
        async with serving(cached_model) as s:
            (served,) = s.catalog.serving
            first = await s.service.classify(png(5), model_name="m", k=3)
            again = await s.service.classify(png(5), model_name="m", k=3)
            assert again == first
            assert s.decoded() == 1 and served.batches == [1]
            other = await s.service.classify(png(6), model_name="m", k=1)
            assert other.predictions[0].label == "class6" and s.decoded() == 2
            sample = s.metrics.registry.get_sample_value
            lookups = [
                sample("imgserve_result_cache_requests_total", {"model": "m", "version": "1", "result": r})
                for r in ("hit", "miss")
            ]
            assert lookups == [1, 2]

    run(scenario())


class RacingCatalog(FakeCatalog):
    """The first lookup returns the version a reload is retiring at that very moment; later
    ones see what replaced it."""

    def __init__(self, *models: FakeModel) -> None:
        retiring, *serving = models
        super().__init__(*serving)
        self.retiring: FakeModel | None = retiring

    def get(self, name: str, version: int | None = None) -> Any:
        if self.retiring is not None:
            self.lookups += 1
            retiring, self.retiring = self.retiring, None
            return retiring
        return super().get(name, version)


def test_a_request_that_meets_a_reload_runs_once_more_on_the_replacement() -> None:
    async def scenario() -> None:
        async with serving(model(version=1), model(version=2), catalog=RacingCatalog) as s:
            retired = s.catalog.retiring
            assert retired is not None
            await retired.retire()
            result = await s.service.classify(png(4), model_name="m", k=1)
            assert result.version == 2 and result.predictions[0].label == "class4"
            assert retired.batches == []

    run(scenario())


def test_a_request_is_retried_only_once_and_then_told_to_come_back() -> None:
    async def scenario() -> None:
        async with serving(model(version=1), model(version=2), catalog=RacingCatalog) as s:
            (replacement,) = s.catalog.serving
            await replacement.retire()  # the replacement is retired as well: shutting down
            retired = s.catalog.retiring
            assert retired is not None
            await retired.retire()
            with pytest.raises(ServiceError) as closed:
                await s.service.infer(model_name="m", tensors=[tensor(1)])
            assert closed.value.kind is ErrorKind.SHUTTING_DOWN and closed.value.retry_after == 1
            assert s.catalog.lookups == 2

    run(scenario())


def test_a_model_failure_on_an_image_is_an_internal_error_of_that_request_only() -> None:
    async def scenario() -> None:
        async with serving(model(poison=13)) as s:
            with pytest.raises(ServiceError) as failed:
                await s.service.classify(png(13), model_name="m", k=1)
            assert failed.value.kind is ErrorKind.INTERNAL
            assert (await s.service.classify(png(12), model_name="m", k=1)).predictions[0].label == "class2"

    run(scenario())


def test_one_description_of_each_model_with_the_runtime_that_serves_it() -> None:
    async def scenario() -> None:
        async with serving(model(version=1), model(version=2, runtime="litert", max_queue_size=8)) as s:
            assert [(m.name, m.version) for m in s.service.models()] == [("m", 1), ("m", 2)]
            newest = s.service.model("m")
            assert newest.version == 2 and newest.runtime == "litert"  # not the manifest's "tensorflow"
            assert newest.max_batch_size == 4 and newest.max_images == 8  # the queue bounds a request
            assert newest.manifest.output.dtype == "float32" and len(newest.manifest.labels) == 10
            assert s.service.model("m", "1").version == 1
            with pytest.raises(ServiceError) as missing:
                s.service.model("nothing")
            assert missing.value.kind is ErrorKind.MODEL_NOT_FOUND

    run(scenario())


def test_readiness_and_the_repository_operations() -> None:
    async def scenario() -> None:
        async with serving(model(), lambda c, m: FakeModel(fake_manifest(name="other"), c)) as s:
            assert s.service.readiness().ready
            s.catalog.serving[1].ready = False
            s.catalog.errors["broken"] = "v1: corrupt"
            readiness = s.service.readiness()
            assert not readiness.ready and readiness.models == {"m": True, "other": False}
            assert readiness.failed == ["broken"] and readiness.repository_readable
            index = s.service.repository_index()
            assert [m.name for m in index.served] == ["m", "other"] and index.errors == {"broken": "v1: corrupt"}
            assert await s.service.load("broken") == "v1: corrupt" and await s.service.load("m") is None
            assert s.catalog.reloads == ["broken", "m"]
            await s.service.unload("other")
            assert [m.name for m in s.service.models()] == ["m"]

    run(scenario())


def test_background_work_runs_when_no_request_waits() -> None:
    """A job's images (priority 1) queued before a client's request still run after it."""

    async def scenario() -> None:
        async with serving(model(hold=True, max_batch_size=4)) as s:
            (served,) = s.catalog.serving
            blocker = asyncio.ensure_future(s.service.classify(png(1), model_name="m", k=1))
            await until(lambda: served.runner.waiting == 1)
            job = asyncio.ensure_future(s.service.classify_many([png(2), png(3)], model_name="m", k=1, priority=1))
            await until(lambda: served.queued == 2)
            live = asyncio.ensure_future(s.service.classify(png(4), model_name="m", k=1))
            await until(lambda: served.queued == 3)
            for _ in range(3):
                await until(lambda: served.runner.waiting == 1)
                served.release()
            await asyncio.gather(blocker, job, live)
            assert served.runner.calls == [[1], [4], [2, 3]]

    run(scenario())
