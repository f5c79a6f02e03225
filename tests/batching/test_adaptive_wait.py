"""The adaptive wait, end to end through the batcher, in virtual time.

A simulated model takes 5 ms a batch whatever its size; clients resubmit a fraction of a
millisecond after each answer. Nothing sleeps, so batch sizes and waits are exact.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batching import DeadlineExceeded, Overloaded
from tests.batching.simulation import SimulatedModel, VirtualClock, WaitRecorder, batcher_for, closed_loop, run_until

FIXED = 0.005
RETURN = 0.0003  # an answered client's next item arrives this long after the batch ends
CAP = 0.002


def closed_loop_run(
    clients: int, *, cap: float, fixed: float = FIXED, per_item: float = 0.0, seconds: float = 0.3
) -> tuple[SimulatedModel, WaitRecorder]:
    async def scenario() -> tuple[SimulatedModel, WaitRecorder]:
        clock = VirtualClock()
        model = SimulatedModel(clock, fixed, per_item)
        observer = WaitRecorder()
        batcher = batcher_for(model, observer, max_batch_size=16, max_adaptive_delay=cap)
        await closed_loop(batcher, clock, clients, RETURN, clock.now() + seconds)
        await batcher.close(drain_timeout=1)
        return model, observer

    return asyncio.run(scenario())


def served_after(model: SimulatedModel, seconds: float) -> int:
    start = model.calls[0].started
    return sum(len(c.items) for c in model.calls if c.started >= start + seconds)


def test_a_closed_loop_fills_its_batches_with_the_adaptive_wait() -> None:
    without, _ = closed_loop_run(16, cap=0.0)
    with_wait, _ = closed_loop_run(16, cap=CAP)
    # Without it the answered half comes back just too late, batch after batch.
    assert statistics.mean(without.sizes[20:]) < 8.5
    # With it, the runner waits the 0.45 ms it takes them to come back.
    assert statistics.mean(with_wait.sizes[20:-1]) == 16
    # And nearly twice the work done in the same time, once it has learnt the load.
    assert served_after(with_wait, 0.1) > 1.7 * served_after(without, 0.1)


def test_a_lone_client_never_waits() -> None:
    model, observer = closed_loop_run(1, cap=CAP)
    assert len(model.calls) > 50
    assert max(observer.waits) == 0.0


def test_a_lone_request_on_a_server_idle_after_load_goes_at_once() -> None:
    async def scenario() -> None:
        clock = VirtualClock()
        model = SimulatedModel(clock, FIXED)
        observer = WaitRecorder()
        batcher = batcher_for(model, observer, max_batch_size=16, max_adaptive_delay=CAP)
        await closed_loop(batcher, clock, 16, RETURN, clock.now() + 0.1)
        assert model.sizes[-2] == 16  # it has learnt that 16 items come back together
        clock.advance_to(clock.now() + 1.0)
        lone = asyncio.ensure_future(batcher.submit(7))
        await run_until(clock)
        assert await lone == 70
        assert observer.waits[-1] == 0.0
        await batcher.close(drain_timeout=1)

    asyncio.run(scenario())


def test_a_burst_then_silence_waits_no_longer_than_the_cap() -> None:
    async def scenario() -> None:
        clock = VirtualClock()
        model = SimulatedModel(clock, FIXED)
        observer = WaitRecorder()
        batcher = batcher_for(model, observer, max_batch_size=16, max_adaptive_delay=CAP)
        await closed_loop(batcher, clock, 16, RETURN, clock.now() + 0.1)
        freed_at = model.calls[-1].finished
        assert freed_at is not None and clock.now() < freed_at + CAP  # the clients' last return delay
        # Three of the sixteen come back; the other thirteen never will.
        burst = [asyncio.ensure_future(batcher.submit(i)) for i in (100, 101, 102)]
        await run_until(clock)
        assert await asyncio.gather(*burst) == [1000, 1010, 1020]
        assert model.calls[-1].items == [100, 101, 102]
        assert model.calls[-1].started == pytest.approx(freed_at + CAP)
        await batcher.close(drain_timeout=1)

    asyncio.run(scenario())


def test_a_held_batch_leaves_in_time_for_its_earliest_deadline() -> None:
    async def scenario() -> None:
        clock = VirtualClock()
        model = SimulatedModel(clock, FIXED)
        batcher = batcher_for(model, max_batch_size=16, max_adaptive_delay=CAP)
        await closed_loop(batcher, clock, 16, RETURN, clock.now() + 0.1)
        freed_at = model.calls[-1].finished
        assert freed_at is not None
        arrived = clock.now()
        # It would wait until freed_at + CAP; this deadline needs it to leave 1.55 ms sooner.
        deadline = arrived + 0.0005 + FIXED
        assert deadline - FIXED < freed_at + CAP
        relaxed = asyncio.ensure_future(batcher.submit(100))
        urgent = asyncio.ensure_future(batcher.submit(101, deadline=deadline))
        await run_until(clock)
        assert await asyncio.gather(relaxed, urgent) == [1000, 1010]
        assert model.calls[-1].items == [100, 101]
        assert model.calls[-1].started == pytest.approx(deadline - FIXED, abs=1e-6)
        assert model.calls[-1].finished == pytest.approx(deadline, abs=1e-6)
        await batcher.close(drain_timeout=1)

    asyncio.run(scenario())


def test_nothing_changes_when_per_item_cost_dominates() -> None:
    without, _ = closed_loop_run(16, cap=0.0, fixed=0.0, per_item=0.0005)
    with_wait, _ = closed_loop_run(16, cap=CAP, fixed=0.0, per_item=0.0005)
    assert with_wait.sizes == without.sizes


def test_a_backlog_of_full_batches_is_unchanged() -> None:
    without, _ = closed_loop_run(64, cap=0.0)
    with_wait, _ = closed_loop_run(64, cap=CAP)
    assert with_wait.sizes == without.sizes


# A caller: when it first comes, what each of its items costs, its deadline budget (or none),
# how long it takes to come back once answered (None: it never does), and how many items.
caller = st.tuples(
    st.floats(0.0, 0.02),
    st.integers(1, 4),
    st.one_of(st.none(), st.floats(0.0005, 0.03)),
    st.one_of(st.none(), st.floats(0.0, 0.003), st.floats(0.0, 0.0005), st.floats(0.0, 0.0005)),
    st.integers(1, 12),
)


@given(
    callers=st.lists(caller, min_size=1, max_size=16),
    max_batch_size=st.integers(1, 16),
    max_queue_delay=st.sampled_from([0.0, 0.0, 0.001, 0.003]),
    cap=st.sampled_from([0.0, 0.001, 0.002, 0.005, 0.005]),
    fixed=st.sampled_from([0.0, 0.002, 0.005, 0.005, 0.01]),
    per_item=st.sampled_from([0.0, 0.0001, 0.001]),
)
def test_no_item_waits_past_the_caps_after_the_runner_frees_nor_leaves_after_its_deadline(
    callers: list[tuple[float, int, float | None, float | None, int]],
    max_batch_size: int,
    max_queue_delay: float,
    cap: float,
    fixed: float,
    per_item: float,
) -> None:
    """Random open arrivals (callers that never come back) mixed with closed-loop callers
    (who come back once answered, the pattern the adaptive wait is for)."""
    submitted: dict[int, tuple[float, float | None]] = {}
    outcomes: dict[int, Any] = {}

    def cost(item: int) -> int:
        return callers[item // 100][1]

    async def scenario() -> SimulatedModel:
        clock = VirtualClock()
        model = SimulatedModel(clock, fixed, per_item, cost=cost)
        batcher = batcher_for(
            model, max_batch_size=max_batch_size, max_queue_delay=max_queue_delay, max_adaptive_delay=cap
        )

        async def one_caller(index: int) -> None:
            first, _, budget, comes_back, items = callers[index]
            await clock.sleep(first)
            for item in range(index * 100, index * 100 + (items if comes_back is not None else 1)):
                deadline = None if budget is None else clock.now() + budget
                submitted[item] = (clock.now(), deadline)
                try:
                    outcomes[item] = await batcher.submit(item, deadline=deadline)
                except (Overloaded, DeadlineExceeded) as refused:
                    outcomes[item] = refused
                await clock.sleep(comes_back or 0.0)

        everyone = asyncio.gather(*(one_caller(i) for i in range(len(callers))))
        await run_until(clock)
        await everyone
        await batcher.close(drain_timeout=1)
        return model

    model = asyncio.run(scenario())
    assert set(outcomes) == set(submitted)  # every caller was answered: nothing starves
    if max_queue_delay == 0:
        # The adaptive wait never lets a deadline pass while the runner is free: an item
        # expires only when the runner was busy at its deadline.
        for item, outcome in outcomes.items():
            if isinstance(outcome, DeadlineExceeded):
                deadline = submitted[item][1]
                assert deadline is not None
                assert any(c.started <= deadline <= (c.finished or deadline) for c in model.calls)
    longest = max(max_queue_delay, cap)
    for call in model.calls:
        freed = model.freed_before(call.started)
        for item in call.items:
            enqueued, deadline = submitted[item]
            assert deadline is None or call.started < deadline
            since = enqueued if freed is None else max(enqueued, freed)
            assert call.started - since <= longest + 1e-9
