"""The pieces of the process boundary on their own: frames, errors, shared-memory slots."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batching import BatcherClosed, BatchResultMismatch, DeadlineExceeded, Overloaded, RequestTooLarge
from model_contract.errors import ErrorKind, ServiceError
from model_contract.manifest import ModelManifest
from server.ipc import frames
from server.ipc.errors import ModelFailure, decode_error, encode_error
from server.ipc.owner import OwnerServer
from server.ipc.slots import AttachedRing, SlotRing, SlotsExhausted
from tests import helpers
from tests.fakes import GatedRuntime


def read_all(data: bytes) -> list[tuple[frames.Header, bytes]]:
    async def scenario() -> list[tuple[frames.Header, bytes]]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        out = []
        while True:
            try:
                out.append(await frames.receive(reader))
            except asyncio.IncompleteReadError:
                return out

    return asyncio.run(scenario())


_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = _scalars | st.lists(_scalars, max_size=4) | st.dictionaries(st.text(max_size=8), _scalars, max_size=4)


@given(st.lists(st.tuples(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.binary(max_size=64))))
def test_frames_arrive_whole_and_in_order(messages: list[tuple[frames.Header, bytes]]) -> None:
    wire = b"".join(b"".join(bytes(part) for part in frames.encode(h, p)) for h, p in messages)
    assert read_all(wire) == messages


@given(st.binary(max_size=200))
def test_garbage_is_a_frame_error_or_the_end_never_anything_else(data: bytes) -> None:
    with contextlib.suppress(frames.FrameError):  # the connection is then dropped
        read_all(data)


def test_a_frame_announcing_a_huge_header_is_refused_before_reading_it() -> None:
    with pytest.raises(frames.FrameError):
        read_all(struct.pack("!II", frames.MAX_HEADER_BYTES + 1, 0))


@pytest.mark.parametrize(
    "error",
    [
        Overloaded(1.5, 10, 12, "queue full"),
        RequestTooLarge(300, 256),
        DeadlineExceeded("late"),
        BatcherClosed("closing"),
        BatchResultMismatch("3 results for 4 items"),
    ],
)
def test_batching_errors_cross_as_themselves(error: Exception) -> None:
    again = decode_error(encode_error(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    if isinstance(error, Overloaded):
        assert isinstance(again, Overloaded)
        assert (again.retry_after, again.queued, again.capacity) == (1.5, 10, 12)


@given(st.sampled_from(list(ErrorKind)), st.text(max_size=50), st.none() | st.floats(0, 60))
def test_service_errors_cross_with_kind_message_and_retry_after(
    kind: ErrorKind, message: str, retry: float | None
) -> None:
    again = decode_error(encode_error(ServiceError(kind, message, retry)))
    assert isinstance(again, ServiceError)
    assert (again.kind, again.message, again.retry_after) == (kind, ServiceError(kind, message).message, retry)


def test_a_runtime_failure_crosses_as_a_model_failure_naming_it() -> None:
    again = decode_error(encode_error(RuntimeError("poisoned input")))
    assert isinstance(again, ModelFailure)
    assert str(again) == "RuntimeError: poisoned input"


def test_slots_carry_tensors_to_the_other_side_and_are_all_or_nothing() -> None:
    ring = SlotRing((4, 4, 3), np.dtype(np.uint8), 3)
    try:
        tensors = [np.full((4, 4, 3), v, np.uint8) for v in (5, 6)]
        slots = ring.put(tensors)
        attached = AttachedRing(ring.name, (4, 4, 3), np.dtype(np.uint8), 3)
        views = attached.views(slots)
        assert [int(v[0, 0, 0]) for v in views] == [5, 6]
        assert not views[0].flags.writeable
        with pytest.raises(SlotsExhausted):
            ring.put(tensors)  # two wanted, one free: none taken
        assert ring.free == 1
        ring.release(slots)
        assert ring.free == 3
        with pytest.raises(ValueError):
            attached.views([3])
        del views
        attached.close()
    finally:
        ring.close()


def test_a_ring_smaller_than_announced_is_refused() -> None:
    ring = SlotRing((4, 4, 3), np.dtype(np.uint8), 2)
    try:
        with pytest.raises(ValueError):
            AttachedRing(ring.name, (4, 4, 3), np.dtype(np.uint8), 100)
    finally:
        ring.close()


@asynccontextmanager
async def split_service(repository: Path) -> AsyncIterator[Any]:
    """The fake model's service, ready, with its models behind the owner's protocol."""
    app = helpers.fake_app(repository, GatedRuntime())
    async with app.router.lifespan_context(app):
        service = app.state.service
        await helpers.until(lambda: service.readiness().ready)
        yield service


def test_a_version_retired_after_a_worker_chose_it_is_retried_on_its_replacement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(helpers, "SPLIT", True)

    async def scenario() -> None:
        async with split_service(tmp_path) as service:
            chosen = service._catalog.get(helpers.MODEL)  # what a request in flight picked: v1
            helpers.write_fake_model(tmp_path, version=2)
            await service.load(helpers.MODEL)  # v2 serves, v1 is retired
            tensor = np.full((8, 8, 3), 3, np.uint8)
            with pytest.raises(BatcherClosed):
                await chosen.infer_many([tensor], None)
            # A request that picked v1 before the worker heard of v2 is retried on v2.
            catalog, picks = service._catalog, []
            newest = catalog.get

            def stale_first(name: str, version: int | None = None) -> Any:
                picks.append(version)
                return chosen if len(picks) == 1 else newest(name, version)

            monkeypatch.setattr(catalog, "get", stale_first)
            answer = await service.classify(helpers.png(3), model_name=helpers.MODEL, k=1)
            assert (answer.version, answer.predictions[0].label) == (2, "class3")
            assert picks == [None, None]

    asyncio.run(scenario())


def test_a_version_loaded_again_with_a_new_manifest_is_served_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(helpers, "SPLIT", True)

    async def scenario() -> None:
        async with split_service(tmp_path) as service:
            assert service.model(helpers.MODEL).manifest.labels[3] == "class3"
            await service.unload(helpers.MODEL)
            manifest = ModelManifest.read(tmp_path / helpers.MODEL / "1")
            renamed = manifest.model_copy(update={"labels": [f"renamed{i}" for i in range(10)]})
            renamed.write(tmp_path / helpers.MODEL / "1")
            await service.load(helpers.MODEL)
            await helpers.until(lambda: service.readiness().ready)
            answer = await service.classify(helpers.png(3), model_name=helpers.MODEL, k=1)
            assert answer.predictions[0].label == "renamed3"

    asyncio.run(scenario())


def test_a_cancel_read_together_with_its_infer_is_still_answered(tmp_path: Path) -> None:
    # The worker frees a request's slots only on an answer: a cancel that reaches the owner
    # before the request's task has started must be answered too, or the slots leak for good.
    async def scenario() -> None:
        runtime = GatedRuntime()
        runtime.gate.clear()
        app = helpers.fake_app(tmp_path, runtime)  # only for its repository and settings
        settings = app.state.settings
        owner = OwnerServer(settings, lambda *_: runtime)
        socket_path = Path(tempfile.mkdtemp(prefix="imgserve-test-")) / "owner.sock"
        await owner.start(socket_path)
        ring = SlotRing((8, 8, 3), np.dtype(np.uint8), 4)
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
            infer = {"op": "infer", "id": 1, "model": helpers.MODEL, "version": 1, "ring": ring.name,
                     "ring_slots": 4, "slots": ring.put([np.zeros((8, 8, 3), np.uint8)]), "deadline": None}  # fmt: skip
            writer.writelines([*frames.encode(infer), *frames.encode({"op": "cancel", "id": 1})])
            answers = []
            for _ in range(5):
                header, _ = await asyncio.wait_for(frames.receive(reader), 10)
                if header.get("op") != "catalog":
                    answers.append(header)
                    break
            assert answers == [{"op": "cancelled", "id": 1}]
            writer.close()
        finally:
            runtime.gate.set()
            await owner.close()
            ring.close()
            shutil.rmtree(socket_path.parent, ignore_errors=True)

    asyncio.run(scenario())
