"""A job's life in the store: created, claimed, its images' outcomes, finished or cancelled,
seen only by its owner, and still there after a restart."""

from __future__ import annotations

import asyncio
from datetime import timezone

import pytest

from server.store.model import CallbackStatus, ItemOutcome, JobStatus
from tests.server.store.support import UtcClock, classification, new_job, open_store, scalar

BROKEN = {"code": "bad_image", "message": "cannot identify image file"}


def test_a_job_runs_from_queued_to_done(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await store.create_job(new_job(images=3, callback_url="https://client.example/done"))
        created = clock()
        assert (await store.queued_jobs("alice"), await store.queued_jobs("bob"), await store.queued_jobs()) == (
            1,
            0,
            1,
        )

        clock.advance(5)
        claimed = await store.claim_job("runner-1", lease_s=30)
        assert claimed is not None
        assert (claimed.id, claimed.owner, claimed.model, claimed.top_k, claimed.images_total) == (
            job_id,
            "alice",
            "efficientnet_lite0",
            5,
            3,
        )
        assert await store.claim_job("runner-2", lease_s=30) is None  # the only job is taken
        assert await store.pending_images(job_id, limit=10) == [(0, b"image 0"), (1, b"image 1"), (2, b"image 2")]
        assert await store.pending_images(job_id, limit=2) == [(0, b"image 0"), (1, b"image 1")]

        await store.save_outcomes(job_id, [ItemOutcome(0, result=classification("cat")), ItemOutcome(2, error=BROKEN)])
        assert await store.pending_images(job_id, limit=10) == [(1, b"image 1")]
        running = await store.job(job_id, "alice", items=(0, 1000))
        assert running is not None and running.status is JobStatus.RUNNING and running.images_done == 2
        assert running.callback_status is CallbackStatus.PENDING  # pending: not due before the end

        await store.save_outcomes(job_id, [ItemOutcome(1, result=classification("dog"))])
        clock.advance(5)
        await store.finish_job(job_id, JobStatus.DONE)
        view = await store.job(job_id, "alice", items=(0, 1000))
        await store.close()

        assert view is not None
        assert (view.status, view.images_total, view.images_done, view.owner, view.top_k) == (
            JobStatus.DONE,
            3,
            3,
            "alice",
            5,
        )
        assert (view.created_at, view.started_at, view.finished_at) == (
            created,
            created.replace(second=5),
            created.replace(second=10),
        )
        for stamp in (view.created_at, view.started_at, view.finished_at):
            assert stamp is not None and stamp.tzinfo is not None and stamp.utcoffset() == timezone.utc.utcoffset(None)
        assert [(item.index, item.filename, item.status) for item in view.items] == [
            (0, "0.jpg", "done"),
            (1, "1.jpg", "done"),
            (2, "2.jpg", "failed"),
        ]
        assert [item.result for item in view.items] == [classification("cat"), classification("dog"), None]
        assert [item.error for item in view.items] == [None, None, BROKEN]
        assert (view.callback_url, view.callback_status, view.callback_attempts) == (
            "https://client.example/done",
            CallbackStatus.PENDING,
            0,
        )

    asyncio.run(scenario())


def test_a_view_without_items_has_none(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await store.create_job(new_job(images=3))
        view = await store.job(job_id, "alice")
        full = await store.job(job_id, "alice", items=(0, 1000))
        window = await store.job(job_id, "alice", items=(1, 1))
        await store.close()
        assert view is not None and view.items == [] and view.images_total == 3
        assert full is not None and [item.status for item in full.items] == ["pending"] * 3
        assert window is not None and [item.index for item in window.items] == [1]

    asyncio.run(scenario())


def test_jobs_are_claimed_oldest_first(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        ids = []
        for _ in range(3):
            ids.append(await store.create_job(new_job(images=1)))
            clock.advance(1)
        claimed = [await store.claim_job("runner", lease_s=30) for _ in range(4)]
        await store.close()
        assert [job.id if job else None for job in claimed] == [*ids, None]

    asyncio.run(scenario())


def test_an_outcome_is_recorded_once(database_url: str, clock: UtcClock) -> None:
    # A runner that retries a batch after a timeout saves the same items again: the first
    # outcome stays and the count does not move.
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await store.create_job(new_job(images=2))
        await store.claim_job("runner", lease_s=30)
        await store.save_outcomes(job_id, [ItemOutcome(0, result=classification("cat"))])
        await store.save_outcomes(job_id, [ItemOutcome(0, result=classification("cat"))])
        await store.save_outcomes(job_id, [ItemOutcome(0, error=BROKEN)])
        view = await store.job(job_id, "alice", items=(0, 1000))
        await store.close()
        assert view is not None and view.images_done == 1
        assert (view.items[0].status, view.items[0].result, view.items[0].error) == (
            "done",
            classification("cat"),
            None,
        )

    asyncio.run(scenario())


def test_an_outcome_needs_a_result_or_an_error(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await store.create_job(new_job(images=1))
        try:
            with pytest.raises(ValueError, match="item 0"):
                await store.save_outcomes(job_id, [ItemOutcome(0)])
            with pytest.raises(ValueError, match="item 0"):
                await store.save_outcomes(job_id, [ItemOutcome(0, result=classification("cat"), error=BROKEN)])
            with pytest.raises(ValueError, match="DONE or FAILED"):
                await store.finish_job(job_id, JobStatus.CANCELLED)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_image_bytes_go_once_they_have_an_outcome(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await store.create_job(new_job(images=3))
        await store.claim_job("runner", lease_s=30)
        await store.save_outcomes(job_id, [ItemOutcome(0, result=classification("cat"))])
        held = await scalar(database_url, "SELECT count(*) FROM job_items WHERE image IS NOT NULL")
        await store.finish_job(job_id, JobStatus.FAILED)  # gave up with two images left
        after = await scalar(database_url, "SELECT count(*) FROM job_items WHERE image IS NOT NULL")
        await store.close()
        assert (held, after) == (2, 0)

    asyncio.run(scenario())


def test_a_finished_job_survives_a_restart(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await store.create_job(new_job(images=2))
        await store.claim_job("runner", lease_s=30)
        await store.save_outcomes(job_id, [ItemOutcome(0, result=classification("cat")), ItemOutcome(1, error=BROKEN)])
        await store.finish_job(job_id, JobStatus.DONE)
        before = await store.job(job_id, "alice", items=(0, 1000))
        await store.close()

        reopened = await open_store(database_url, clock)
        after = await reopened.job(job_id, "alice", items=(0, 1000))
        claimable = await reopened.claim_job("runner", lease_s=30)
        await reopened.close()
        assert before is not None and after == before
        assert after.callback_status is CallbackStatus.NONE and claimable is None

    asyncio.run(scenario())


def test_a_crashed_runners_job_is_taken_over_where_it_stopped(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await store.create_job(new_job(images=3))
        first = await store.claim_job("runner-1", lease_s=30)
        started = clock()
        await store.save_outcomes(job_id, [ItemOutcome(0, result=classification("cat"))])
        clock.advance(20)
        assert await store.renew_lease(job_id, "runner-1", lease_s=30)  # until started + 50 s
        assert await store.renew_lease(job_id, "runner-2", lease_s=30) is False
        clock.advance(29)
        assert await store.claim_job("runner-2", lease_s=30) is None  # the lease still holds

        clock.advance(2)  # runner-1 died: its lease ran out
        second = await store.claim_job("runner-2", lease_s=30)
        pending = await store.pending_images(job_id, limit=10)
        stale_renewal = await store.renew_lease(job_id, "runner-1", lease_s=30)
        view = await store.job(job_id, "alice", items=(0, 1000))
        await store.close()
        assert first is not None and second == first
        assert pending == [(1, b"image 1"), (2, b"image 2")]
        assert stale_renewal is False
        assert view is not None and view.started_at == started and view.images_done == 1

    asyncio.run(scenario())


def test_a_queued_job_is_cancelled(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await store.create_job(new_job(images=2, callback_url="https://client.example/done"))
        clock.advance(3)
        view = await store.cancel_job(job_id, "alice")
        claimed = await store.claim_job("runner", lease_s=30)
        due = await store.due_callbacks(limit=10)
        held = await scalar(database_url, "SELECT count(*) FROM job_items WHERE image IS NOT NULL")
        places = (await store.queued_jobs("alice"), await store.queued_jobs())
        items = await store.job(job_id, "alice", items=(0, 10))
        await store.close()
        assert view is not None and view.status is JobStatus.CANCELLED and view.finished_at == clock()
        assert view.items == [] and items is not None
        assert [item.status for item in items.items] == ["pending", "pending"]
        # Its callback still holds one of alice's places until it is delivered; not everyone's.
        assert claimed is None and held == 0 and places == (1, 0)
        # The callback tells the receiver the job ended without its results.
        assert view.callback_status is CallbackStatus.PENDING
        assert [(callback.job_id, callback.url, callback.attempts) for callback in due] == [
            (job_id, "https://client.example/done", 0)
        ]

    asyncio.run(scenario())


def test_a_running_job_is_cancelled_and_its_runner_stops(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await store.create_job(new_job(images=3))
        await store.claim_job("runner", lease_s=30)
        await store.save_outcomes(job_id, [ItemOutcome(0, result=classification("cat"))])
        view = await store.cancel_job(job_id, "alice")
        renewed = await store.renew_lease(job_id, "runner", lease_s=30)
        pending = await store.pending_images(job_id, limit=10)
        await store.finish_job(job_id, JobStatus.DONE)  # the runner's last word changes nothing
        clock.advance(3600)
        reclaimed = await store.claim_job("other", lease_s=30)
        after = await store.job(job_id, "alice")
        await store.close()
        assert view is not None and view.status is JobStatus.CANCELLED and view.images_done == 1
        assert view.callback_status is CallbackStatus.NONE  # it asked for none
        assert renewed is False and pending == [] and reclaimed is None
        assert after == view

    asyncio.run(scenario())


def test_cancelling_a_finished_job_changes_nothing(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await store.create_job(new_job(images=1))
        await store.claim_job("runner", lease_s=30)
        await store.save_outcomes(job_id, [ItemOutcome(0, result=classification("cat"))])
        await store.finish_job(job_id, JobStatus.DONE)
        finished = await store.job(job_id, "alice")
        clock.advance(10)
        cancelled = await store.cancel_job(job_id, "alice")
        await store.close()
        assert finished is not None and finished.status is JobStatus.DONE
        assert cancelled == finished

    asyncio.run(scenario())


def test_another_owners_job_does_not_exist(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await store.create_job(new_job(owner="alice", images=1))
        seen = await store.job(job_id, "mallory")
        cancelled = await store.cancel_job(job_id, "mallory")
        unknown = await store.cancel_job("0" * 32, "alice")
        view = await store.job(job_id, "alice", items=(0, 1000))
        await store.close()
        assert (seen, cancelled, unknown) == (None, None, None)
        assert view is not None and view.status is JobStatus.QUEUED

    asyncio.run(scenario())
