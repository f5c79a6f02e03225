"""The async batcher driven by a manual clock and a runner the test releases by hand."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest

from batching import (
    BatcherClosed,
    BatchingConfig,
    BatchResultMismatch,
    DeadlineExceeded,
    MicroBatcher,
    Overloaded,
    RequestTooLarge,
)
from tests.fakes import FakeRunner, ManualClock, RecordingObserver, settle


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def make(
    runner: Any, clock: ManualClock | None = None, **config: Any
) -> tuple[MicroBatcher[int, int], RecordingObserver]:
    observer = RecordingObserver()
    batcher: MicroBatcher[int, int] = MicroBatcher(
        runner, BatchingConfig(**config), clock=clock or ManualClock(), observer=observer
    )
    batcher.start()
    return batcher, observer


def test_lone_request_on_idle_batcher_runs_without_waiting() -> None:
    async def scenario() -> None:
        runner = FakeRunner()
        batcher, _ = make(runner, max_batch_size=8)
        # The clock never moves: a result proves nothing waited for a timer.
        assert await batcher.submit(7) == 70
        assert runner.calls == [[7]]
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_requests_arriving_while_busy_leave_together_as_the_next_batch() -> None:
    async def scenario() -> None:
        runner = FakeRunner(hold=True)
        batcher, observer = make(runner, max_batch_size=8)
        first = asyncio.ensure_future(batcher.submit(1))
        await settle()
        later = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)]
        await settle()
        assert runner.calls == [[1]]  # busy: the others queue
        runner.release()
        await settle()
        assert runner.calls == [[1], [2, 3, 4]]
        runner.release()
        assert await asyncio.gather(first, *later) == [10, 20, 30, 40]
        assert observer.batch_sizes == [1, 3]
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_backlog_is_cut_into_batches_of_at_most_max_batch_size_in_order() -> None:
    async def scenario() -> None:
        runner = FakeRunner(hold=True)
        batcher, _ = make(runner, max_batch_size=4)
        futures = [asyncio.ensure_future(batcher.submit(i)) for i in range(11)]
        await settle()
        for _ in range(3):
            await settle()
            runner.release()
        assert await asyncio.gather(*futures) == [i * 10 for i in range(11)]
        assert runner.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_queue_delay_waits_for_more_items_but_no_longer_than_the_delay() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        runner = FakeRunner()
        batcher, _ = make(runner, clock, max_batch_size=4, max_queue_delay=0.010)
        first = asyncio.ensure_future(batcher.submit(1))
        await settle()
        clock.advance(0.004)
        second = asyncio.ensure_future(batcher.submit(2))
        await settle()
        assert runner.calls == []
        clock.advance(0.006)  # the first item has now waited exactly the delay
        await settle()
        assert runner.calls == [[1, 2]]
        assert await asyncio.gather(first, second) == [10, 20]
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_queue_delay_is_skipped_when_the_batch_fills() -> None:
    async def scenario() -> None:
        runner = FakeRunner()
        batcher, _ = make(runner, max_batch_size=2, max_queue_delay=10.0)
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2))
        assert results == [10, 20]
        assert runner.calls == [[1, 2]]
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_item_whose_deadline_passes_in_the_queue_fails_and_never_runs() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        runner = FakeRunner(hold=True)
        batcher, observer = make(runner, clock, max_batch_size=8)
        busy = asyncio.ensure_future(batcher.submit(1))
        await settle()
        late = asyncio.ensure_future(batcher.submit(2, deadline=clock.now() + 1.0))
        await settle()
        clock.advance(2.0)
        runner.release()
        with pytest.raises(DeadlineExceeded):
            await late
        assert await busy == 10
        assert runner.calls == [[1]]
        assert observer.expired_count == 1
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_a_failing_item_fails_alone_and_its_batch_mates_get_results() -> None:
    async def scenario() -> None:
        runner = FakeRunner(hold=True, poison=3)
        batcher, observer = make(runner, max_batch_size=8)
        blocker = asyncio.ensure_future(batcher.submit(0))
        await settle()
        futures = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3, 4, 5)]
        await settle()
        runner.hold = False
        runner.release()
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert outcomes[:2] == [10, 20] and outcomes[3:] == [40, 50]
        assert isinstance(outcomes[2], ValueError)
        assert await blocker == 0
        # The poisoned item ran alone in the end; every healthy item got its answer.
        assert [3] in runner.calls
        assert observer.failed_batches >= 1
        # And the batcher still serves afterwards.
        assert await batcher.submit(6) == 60
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_a_runner_returning_the_wrong_number_of_results_fails_its_items() -> None:
    async def scenario() -> None:
        async def broken(items: list[int]) -> list[int]:
            return []

        batcher, _ = make(broken, max_batch_size=4)
        with pytest.raises(BatchResultMismatch):
            await batcher.submit(1)
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_full_queue_rejects_at_once_with_a_retry_hint() -> None:
    async def scenario() -> None:
        runner = FakeRunner(hold=True)
        batcher, observer = make(runner, max_batch_size=2, max_queue_size=4)
        running = asyncio.ensure_future(batcher.submit(0))
        await settle()
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 5)]
        await settle()
        assert batcher.queued_cost == 4
        with pytest.raises(Overloaded) as rejected:
            await batcher.submit(99)
        assert rejected.value.retry_after > 0
        assert batcher.queued_cost == 4  # the rejected item took no room
        assert observer.rejected_cost == 1
        runner.hold = False
        runner.release()
        assert await asyncio.gather(running, *queued) == [0, 10, 20, 30, 40]
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_a_caller_that_goes_away_costs_no_model_time() -> None:
    async def scenario() -> None:
        runner = FakeRunner(hold=True)
        batcher, observer = make(runner, max_batch_size=8)
        busy = asyncio.ensure_future(batcher.submit(1))
        await settle()
        gone = asyncio.ensure_future(batcher.submit(2))
        stays = asyncio.ensure_future(batcher.submit(3))
        await settle()
        gone.cancel()
        await settle()
        runner.hold = False
        runner.release()
        assert await asyncio.gather(busy, stays) == [10, 30]
        assert runner.calls == [[1], [3]]
        assert observer.abandoned_count == 1
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_close_drains_queued_work_then_refuses_new_work() -> None:
    async def scenario() -> None:
        runner = FakeRunner(hold=True)
        batcher, _ = make(runner, max_batch_size=8)
        futures = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await settle()
        closing = asyncio.ensure_future(batcher.close(drain_timeout=5))
        await settle()
        with pytest.raises(BatcherClosed):
            await batcher.submit(9)
        runner.hold = False
        runner.release()
        await closing
        assert await asyncio.gather(*futures) == [0, 10, 20]

    run(scenario)


def test_close_fails_what_cannot_finish_within_the_drain_timeout() -> None:
    async def scenario() -> None:
        runner = FakeRunner(hold=True)  # never released
        batcher, _ = make(runner, max_batch_size=1, clock=None)
        stuck = asyncio.ensure_future(batcher.submit(1))
        queued = asyncio.ensure_future(batcher.submit(2))
        await settle()
        await batcher.close(drain_timeout=0.01)
        for future in (stuck, queued):
            with pytest.raises(BatcherClosed):
                await future

    run(scenario)


def test_two_batches_run_at_once_when_two_slots_are_configured() -> None:
    async def scenario() -> None:
        runner = FakeRunner(hold=True)
        batcher, _ = make(runner, max_batch_size=4, max_concurrent_batches=2)
        first = asyncio.ensure_future(batcher.submit(1))
        await settle()
        second = asyncio.ensure_future(batcher.submit(2))
        await settle()
        assert runner.calls == [[1], [2]]  # the second did not wait for the first
        third = asyncio.ensure_future(batcher.submit(3))
        await settle()
        assert runner.calls == [[1], [2]]  # both slots busy: the third queues
        runner.release()
        await settle()
        assert runner.calls == [[1], [2], [3]]
        runner.release()
        runner.release()
        assert await asyncio.gather(first, second, third) == [10, 20, 30]
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_a_request_larger_than_a_batch_is_split_and_answered_in_order() -> None:
    async def scenario() -> None:
        runner = FakeRunner()
        batcher, observer = make(runner, max_batch_size=4)
        assert await batcher.submit_many(list(range(10))) == [i * 10 for i in range(10)]
        assert runner.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert observer.batch_sizes == [4, 4, 2]
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_a_multi_item_request_is_admitted_whole_or_not_at_all() -> None:
    async def scenario() -> None:
        runner = FakeRunner(hold=True)
        batcher, _ = make(runner, max_batch_size=2, max_queue_size=4)
        running = asyncio.ensure_future(batcher.submit(0))
        await settle()
        queued = asyncio.ensure_future(batcher.submit_many([1, 2]))
        await settle()
        with pytest.raises(Overloaded):
            await batcher.submit_many([3, 4, 5])  # 2 queued + 3 > 4
        assert batcher.queued_cost == 2  # nothing of the refused request was queued
        runner.hold = False
        runner.release()
        assert await running == 0
        assert await queued == [10, 20]
        assert [3] not in runner.calls and [3, 4] not in runner.calls
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_a_request_larger_than_the_whole_queue_is_too_large_not_overloaded() -> None:
    """Overloaded invites a retry; a request no empty queue could hold must not get one."""

    async def scenario() -> None:
        runner = FakeRunner()
        batcher, observer = make(runner, max_batch_size=2, max_queue_size=4)
        with pytest.raises(RequestTooLarge) as refused:
            await batcher.submit_many([1, 2, 3, 4, 5])
        assert (refused.value.cost, refused.value.capacity) == (5, 4)
        assert batcher.queued_cost == 0 and observer.rejected_cost == 5 and runner.calls == []
        assert await batcher.submit_many([1, 2, 3, 4]) == [10, 20, 30, 40]  # a full queue's worth is fine
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_when_one_item_of_a_request_fails_its_unsent_items_are_withdrawn() -> None:
    async def scenario() -> None:
        runner = FakeRunner(hold=True, poison=1)
        batcher, observer = make(runner, max_batch_size=2)
        request = asyncio.ensure_future(batcher.submit_many([1, 2, 3, 4, 5]))
        await settle()
        runner.release()  # [1, 2] fails: bisect into [1] and [2]
        await settle()
        runner.release()  # [1] fails alone: the request fails
        await settle()
        runner.release()  # [2] finishes
        with pytest.raises(ValueError):
            await request
        await settle()
        assert runner.calls == [[1, 2], [1], [2]]  # 3, 4 and 5 never ran
        assert observer.abandoned_count == 3
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_a_request_that_cannot_make_its_deadline_is_refused_at_once() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        runner = FakeRunner(hold=True)
        batcher, _ = make(runner, clock, max_batch_size=4)
        for i in range(3):  # teach the latency model: one item takes 0.1 s
            done = asyncio.ensure_future(batcher.submit(i))
            await settle()
            clock.advance(0.1)
            runner.release()
            await done
        busy = asyncio.ensure_future(batcher.submit(9))
        await settle()
        # 0.1 s for the batch in flight plus 0.1 s for this one: 0.15 s is not enough.
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(10, deadline=clock.now() + 0.15)
        assert refused.value.retry_after == pytest.approx(0.1)
        fits = asyncio.ensure_future(batcher.submit(11, deadline=clock.now() + 1.0))
        await settle()
        runner.hold = False
        runner.release()
        assert await asyncio.gather(busy, fits) == [90, 110]
        await batcher.close(drain_timeout=1)

    run(scenario)


def test_on_start_tells_when_the_items_batches_start() -> None:
    """Where queueing ends, for tracing: the batcher's time each batch holding the items starts."""

    async def scenario() -> None:
        clock, runner = ManualClock(start=100.0), FakeRunner(hold=True)
        batcher, _ = make(runner, clock, max_batch_size=2)
        first = asyncio.ensure_future(batcher.submit(1))
        await settle()
        starts: list[float] = []
        queued = asyncio.ensure_future(batcher.submit_many([2, 3, 4], on_start=starts.append))
        await settle()
        assert starts == []  # still queued behind the running batch
        clock.advance(1.5)
        runner.release()  # the first batch ends; [2, 3] start at 101.5
        await settle()
        clock.advance(0.5)
        runner.release()  # [4] starts at 102.0
        await settle()
        runner.release()
        assert await queued == [20, 30, 40] and await first == 10
        assert starts == [101.5, 102.0]
        await batcher.close(drain_timeout=1)

    run(scenario)
