"""Two server processes (here: two stores, each with its own connections) claim from one
database at once: every job goes to exactly one of them."""

from __future__ import annotations

import asyncio
from collections import Counter

from server.store.model import ClaimedJob, ItemOutcome, QueueFull
from server.store.sql import SqlResultStore
from tests.server.store.support import UtcClock, new_job, open_store

JOBS = 12
CLAIMS_PER_STORE = 10  # 20 claims for 12 jobs: some find nothing left


def test_concurrent_claimers_never_get_the_same_job(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        first = await open_store(database_url, clock)
        second = await open_store(database_url, clock)
        try:
            created = set()
            for _ in range(JOBS):
                created.add(await first.create_job(new_job(images=1)))
                clock.advance(0.001)

            async def claims(store_name: str) -> list[ClaimedJob | None]:
                store = first if store_name == "first" else second
                return list(
                    await asyncio.gather(
                        *(store.claim_job(f"{store_name}-{n}", lease_s=30) for n in range(CLAIMS_PER_STORE))
                    )
                )

            results = await asyncio.gather(claims("first"), claims("second"))
            claimed = [job.id for batch in results for job in batch if job is not None]
            assert sorted(claimed) == sorted(created), Counter(claimed).most_common(3)
            assert sum(job is None for batch in results for job in batch) == 2 * CLAIMS_PER_STORE - JOBS
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


def test_concurrent_saves_of_one_jobs_outcomes_count_each_item_once(database_url: str, clock: UtcClock) -> None:
    # A runner taken over while its predecessor was still finishing a batch: both save outcomes.
    async def scenario() -> None:
        first = await open_store(database_url, clock)
        second = await open_store(database_url, clock)
        try:
            job_id = await first.create_job(new_job(images=8))
            outcomes = [ItemOutcome(index, result={"label": str(index)}) for index in range(8)]
            await asyncio.gather(
                *(store.save_outcomes(job_id, outcomes[start::2]) for store in (first, second) for start in (0, 1))
            )
            view = await first.job(job_id, "alice", items=(0, 1000))
            assert view is not None and view.images_done == 8
            assert [item.result for item in view.items] == [{"label": str(index)} for index in range(8)]
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


def test_concurrent_submissions_cannot_get_past_the_queue_limits_together(database_url: str, clock: UtcClock) -> None:
    """Counted in the insert's own transaction: of many submissions at once, from two server
    processes, exactly the limit get in."""

    async def scenario() -> None:
        first = await open_store(database_url, clock)
        second = await open_store(database_url, clock)
        try:

            async def submit(store: SqlResultStore, owner: str) -> str | None:
                try:
                    return await store.create_job(new_job(owner=owner, images=1), max_per_owner=2, max_total=3)
                except QueueFull:
                    return None

            alice = [submit(store, "alice") for store in (first, second) for _ in range(4)]
            accepted = [job for job in await asyncio.gather(*alice) if job is not None]
            assert len(accepted) == 2  # alice's own limit
            bob = [submit(store, "bob") for store in (first, second) for _ in range(3)]
            accepted_bob = [job for job in await asyncio.gather(*bob) if job is not None]
            assert len(accepted_bob) == 1  # everyone's limit: 3 in all
            assert await first.queued_jobs() == 3
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())
