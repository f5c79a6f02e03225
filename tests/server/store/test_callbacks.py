"""A job's callback: due when the job ends, handed to one sender at a time, retried on the
schedule the sender gives, and all of it kept in the database across restarts."""

from __future__ import annotations

import asyncio

import pytest

from server.store.model import CallbackStatus, ItemOutcome, JobStatus, QueueFull
from server.store.sql import SqlResultStore
from tests.server.store.support import UtcClock, classification, new_job, open_store

URL = "https://client.example/hooks/imgserve"


async def finished_job(store: SqlResultStore, callback_url: str | None = URL) -> str:
    job_id = await store.create_job(new_job(images=1, callback_url=callback_url))
    await store.claim_job("runner", lease_s=30)
    await store.save_outcomes(job_id, [ItemOutcome(0, result=classification("cat"))])
    await store.finish_job(job_id, JobStatus.DONE)
    return job_id


def test_a_callback_is_due_once_its_job_has_finished(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        try:
            running = await store.create_job(new_job(images=1, callback_url=URL))
            await store.claim_job("runner", lease_s=30)
            await finished_job(store, callback_url=None)
            assert await store.due_callbacks(limit=10) == []
            await store.save_outcomes(running, [ItemOutcome(0, result=classification("cat"))])
            await store.finish_job(running, JobStatus.FAILED)
            due = await store.due_callbacks(limit=10)
            assert [(callback.job_id, callback.url, callback.attempts) for callback in due] == [(running, URL, 0)]
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_due_callback_goes_to_one_sender_until_its_claim_lapses(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        first = await open_store(database_url, clock, callback_claim_s=60)
        second = await open_store(database_url, clock, callback_claim_s=60)
        try:
            job_ids = {await finished_job(first) for _ in range(3)}
            handed = await asyncio.gather(first.due_callbacks(limit=10), second.due_callbacks(limit=10))
            assert sorted(callback.job_id for batch in handed for callback in batch) == sorted(job_ids)
            assert await first.due_callbacks(limit=10) == []
            clock.advance(61)  # no attempt was recorded: the sender died
            assert {callback.job_id for callback in await second.due_callbacks(limit=10)} == job_ids
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


def test_the_limit_hands_out_the_longest_due_first(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        try:
            ids = []
            for _ in range(3):
                ids.append(await finished_job(store))
                clock.advance(1)
            first_two = await store.due_callbacks(limit=2)
            last = await store.due_callbacks(limit=2)
            assert [callback.job_id for callback in first_two] == ids[:2]
            assert [callback.job_id for callback in last] == ids[2:]
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_retry_schedule_survives_a_restart(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await finished_job(store)
        [callback] = await store.due_callbacks(limit=10)
        await store.callback_attempted(job_id, CallbackStatus.PENDING, "503 Service Unavailable", retry_in_s=30)
        await store.close()

        reopened = await open_store(database_url, clock)
        try:
            view = await reopened.job(job_id, "alice", items=(0, 1000))
            assert view is not None
            assert (view.callback_status, view.callback_attempts, view.callback_error) == (
                CallbackStatus.PENDING,
                1,
                "503 Service Unavailable",
            )
            clock.advance(29)
            assert await reopened.due_callbacks(limit=10) == []
            clock.advance(1)
            [again] = await reopened.due_callbacks(limit=10)
            assert (again.job_id, again.attempts) == (callback.job_id, 1)
        finally:
            await reopened.close()

    asyncio.run(scenario())


def test_delivered_and_failed_callbacks_are_never_due_again(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        try:
            delivered = await finished_job(store)
            given_up = await finished_job(store)
            await store.due_callbacks(limit=10)
            await store.callback_attempted(delivered, CallbackStatus.DELIVERED, None, None)
            await store.callback_attempted(given_up, CallbackStatus.FAILED, "connection refused", None)
            # A second sender's late report does not undo a delivery.
            await store.callback_attempted(delivered, CallbackStatus.FAILED, "timed out", None)
            clock.advance(3600)
            assert await store.due_callbacks(limit=10) == []
            views = [await store.job(job_id, "alice", items=(0, 1000)) for job_id in (delivered, given_up)]
            assert [(v.callback_status, v.callback_attempts, v.callback_error) for v in views if v] == [
                (CallbackStatus.DELIVERED, 1, None),
                (CallbackStatus.FAILED, 1, "connection refused"),
            ]
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_retry_needs_its_delay(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        try:
            job_id = await finished_job(store)
            with pytest.raises(ValueError, match="retry_in_s"):
                await store.callback_attempted(job_id, CallbackStatus.PENDING, "503", None)
            with pytest.raises(ValueError, match="DELIVERED"):
                await store.callback_attempted(job_id, CallbackStatus.NONE, None, None)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_an_empty_callback_url_asks_for_no_callback(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        try:
            job_id = await finished_job(store, callback_url="")
            view = await store.job(job_id, "alice", items=(0, 1000))
            assert view is not None and (view.callback_url, view.callback_status) == (None, CallbackStatus.NONE)
            assert await store.due_callbacks(limit=10) == []
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_callback_still_to_deliver_holds_its_owners_place_in_the_queue(database_url: str, clock: UtcClock) -> None:
    """A receiver that never answers must not let one client pile up finished jobs whose
    deliveries hold the sender: until its callback is delivered or given up, a job counts
    against its owner's limit (not against everyone's: others' jobs run as before)."""

    async def scenario() -> None:
        store = await open_store(database_url, clock)
        try:
            delivered, given_up = await finished_job(store), await finished_job(store)
            await finished_job(store, callback_url=None)
            assert (await store.queued_jobs("alice"), await store.queued_jobs()) == (2, 0)
            with pytest.raises(QueueFull) as full:
                await store.create_job(new_job(images=1), max_per_owner=2, max_total=10)
            assert full.value.per_owner
            await store.create_job(new_job(owner="bob", images=1), max_per_owner=2, max_total=10)

            await store.callback_attempted(delivered, CallbackStatus.DELIVERED, None, None)
            await store.callback_attempted(given_up, CallbackStatus.FAILED, "timed out", None)
            assert await store.queued_jobs("alice") == 0
            await store.create_job(new_job(images=1), max_per_owner=2, max_total=10)
        finally:
            await store.close()

    asyncio.run(scenario())
