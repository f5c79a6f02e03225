"""prune(): finished jobs and results past the retention time go, and the oldest kept images
while they hold more than their budget; what is younger, or unfinished, stays."""

from __future__ import annotations

import asyncio
from pathlib import Path

from server.store.kept_images import sha256
from server.store.model import ItemOutcome, JobStatus
from server.store.sql import SqlResultStore
from tests.server.store.support import UtcClock, classification, new_job, open_store, scalar

DAY = 24 * 3600.0


async def finished_job(store: SqlResultStore) -> str:
    job_id = await store.create_job(new_job(images=2))
    await store.claim_job("runner", lease_s=30)
    await store.save_outcomes(job_id, [ItemOutcome(0, result=classification("cat")), ItemOutcome(1, result={})])
    await store.finish_job(job_id, JobStatus.DONE)
    return job_id


def test_finished_jobs_and_results_older_than_the_retention_go(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock, retention_s=DAY)
        try:
            old_job = await finished_job(store)
            waiting = await store.create_job(new_job(images=1))  # queued for two days: not finished
            await store.save_result("old", "alice", classification("cat"), image=None)
            clock.advance(DAY / 2)
            await store.save_result("recent", "alice", classification("dog"), image=None)
            clock.advance(DAY / 2)
            recent_job = await finished_job(store)

            assert await store.prune() == 0  # the oldest are exactly a day old: not older
            clock.advance(1)
            assert await store.prune() == 2
            assert await store.job(old_job, "alice", items=(0, 1000)) is None
            assert await store.result("old", "alice") is None
            assert await store.job(recent_job, "alice", items=(0, 1000)) is not None
            assert await store.job(waiting, "alice", items=(0, 1000)) is not None
            assert await store.result("recent", "alice") == classification("dog")
            # The pruned job's items went with it.
            assert await scalar(database_url, "SELECT count(*) FROM job_items WHERE job_id = :id", id=old_job) == 0
            assert await scalar(database_url, "SELECT count(*) FROM job_items") == 3
        finally:
            await store.close()

    asyncio.run(scenario())


def test_the_oldest_kept_images_go_beyond_their_budget(database_url: str, clock: UtcClock, images_dir: Path) -> None:
    images = [bytes([index]) * 100 for index in range(5)]  # 100 bytes each

    async def scenario() -> None:
        store = await open_store(database_url, clock, keep_images=True, images_dir=images_dir, max_image_bytes=250)
        try:
            for index, image in enumerate(images):
                await store.save_result(f"req-{index}", "alice", classification("cat"), image=image)
                clock.advance(1)
            assert await store.prune() == 3  # 500 bytes kept, 250 allowed: the three oldest go
            assert await store.prune() == 0
        finally:
            await store.close()

    asyncio.run(scenario())
    kept = sorted(path.name for path in images_dir.rglob("*") if path.is_file())
    assert kept == sorted(sha256(image) for image in images[3:])


def test_kept_images_have_no_budget_at_zero(database_url: str, clock: UtcClock, images_dir: Path) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock, keep_images=True, images_dir=images_dir, max_image_bytes=0)
        try:
            for index in range(3):
                await store.save_result(f"req-{index}", "alice", {}, image=bytes([index]) * 1000)
            assert await store.prune() == 0
        finally:
            await store.close()

    asyncio.run(scenario())
    assert len([path for path in images_dir.rglob("*") if path.is_file()]) == 3
