"""Batch formation rules, checked without an event loop: items, config and "now" go in."""

from __future__ import annotations

import asyncio

import pytest

from batching import BatchingConfig, Outlook, Pending, next_batch


def queued(*arrivals: float, cost: int = 1, deadline: float | None = None) -> list[Pending[int]]:
    return [Pending(item=i, cost=cost, enqueued_at=t, deadline=deadline) for i, t in enumerate(arrivals)]


def items(ps: list[Pending[int]]) -> list[int]:
    return [p.item for p in ps]


def test_lone_item_on_idle_runner_leaves_at_once() -> None:
    decision = next_batch(queued(10.0), BatchingConfig(max_batch_size=8), now=10.0)
    assert items(decision.batch) == [0]
    assert decision.rest == []


def test_batch_is_capped_and_keeps_arrival_order() -> None:
    decision = next_batch(queued(*[1.0] * 10), BatchingConfig(max_batch_size=4), now=2.0)
    assert items(decision.batch) == [0, 1, 2, 3]
    assert items(decision.rest) == [4, 5, 6, 7, 8, 9]


def test_queue_delay_holds_a_partial_batch_until_the_oldest_has_waited_it() -> None:
    config = BatchingConfig(max_batch_size=4, max_queue_delay=0.010)
    waiting = next_batch(queued(5.000, 5.004), config, now=5.005)
    assert waiting.batch == []
    assert waiting.wake_at == pytest.approx(5.010)
    assert items(waiting.rest) == [0, 1]

    due = next_batch(queued(5.000, 5.004), config, now=5.010)
    assert items(due.batch) == [0, 1]


def test_queue_delay_never_holds_a_full_batch() -> None:
    config = BatchingConfig(max_batch_size=2, max_queue_delay=1.0)
    decision = next_batch(queued(5.0, 5.0, 5.0), config, now=5.0)
    assert items(decision.batch) == [0, 1]


def test_queue_delay_never_waits_past_an_items_deadline() -> None:
    config = BatchingConfig(max_batch_size=4, max_queue_delay=1.0)
    decision = next_batch(queued(5.0, deadline=5.2), config, now=5.0)
    assert decision.wake_at == pytest.approx(5.2)


def test_expired_items_are_answered_not_sent() -> None:
    pending = [*queued(1.0, 1.0), Pending(item=9, cost=1, enqueued_at=1.0, deadline=2.0)]
    decision = next_batch(pending, BatchingConfig(max_batch_size=8), now=3.0)
    assert items(decision.batch) == [0, 1]
    assert items(decision.expired) == [9]


def test_abandoned_items_are_dropped() -> None:
    loop = asyncio.new_event_loop()
    try:
        gone: asyncio.Future[int] = loop.create_future()
        gone.cancel()
        pending = [Pending(item=1, cost=1, enqueued_at=0.0, future=gone), *queued(0.0)]
        decision = next_batch(pending, BatchingConfig(), now=1.0)
    finally:
        loop.close()
    assert items(decision.batch) == [0]
    assert items(decision.abandoned) == [1]


def test_batches_are_sized_by_cost() -> None:
    pending = [Pending(item=i, cost=c, enqueued_at=0.0) for i, c in enumerate([3, 3, 2, 1])]
    decision = next_batch(pending, BatchingConfig(max_batch_size=8), now=0.0)
    assert items(decision.batch) == [0, 1, 2]  # 3+3+2 = 8; the fourth would overflow
    assert items(decision.rest) == [3]


def test_an_item_costlier_than_a_batch_goes_alone() -> None:
    pending = [Pending(item=0, cost=20, enqueued_at=0.0), Pending(item=1, cost=1, enqueued_at=0.0)]
    decision = next_batch(pending, BatchingConfig(max_batch_size=8), now=0.0)
    assert items(decision.batch) == [0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_queue_delay": -1.0},
        {"max_adaptive_delay": -0.001},
        {"max_batch_size": 8, "max_queue_size": 4},
    ],
)
def test_invalid_config_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BatchingConfig(**kwargs)  # type: ignore[arg-type]


def test_batches_pad_up_to_the_next_allowed_size() -> None:
    config = BatchingConfig(max_batch_size=32, allowed_batch_sizes=(1, 2, 4, 8, 16, 32))
    assert [config.padded_size(n) for n in (1, 3, 4, 5, 17, 32)] == [1, 4, 4, 8, 32, 32]
    assert config.batch_shapes == (1, 2, 4, 8, 16, 32)
    assert BatchingConfig(max_batch_size=3).batch_shapes == (1, 2, 3)
    assert BatchingConfig(max_batch_size=3).padded_size(3) == 3


@pytest.mark.parametrize(
    "sizes",
    [(1, 2, 4), (4, 2, 8), (0, 8), (1, 1, 8)],
)
def test_allowed_sizes_must_increase_and_end_at_the_max(sizes: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        BatchingConfig(max_batch_size=8, allowed_batch_sizes=sizes)


# The adaptive wait: the batcher hands in an Outlook (when the runner freed, how much work is
# usually ready soon after, the fitted latency model); the rules below need nothing else.

ADAPTIVE = BatchingConfig(max_batch_size=16, max_adaptive_delay=0.002)


def outlook(
    freed_at: float = 10.0, expected: float = 16.0, surge: float = 8.0, per_item: float = 0.0, fixed: float = 0.005
) -> Outlook:
    return Outlook(freed_at=freed_at, expected=expected, surge=surge, per_item=per_item, fixed=fixed)


def test_adaptive_wait_holds_a_partial_batch_for_the_items_on_their_way() -> None:
    pending = queued(*[9.99] * 8)
    waiting = next_batch(pending, ADAPTIVE, now=10.0, outlook=outlook())
    assert waiting.batch == []
    assert waiting.wake_at == pytest.approx(10.002)  # freed_at + the cap (the fixed cost is larger)
    assert items(next_batch(pending, ADAPTIVE, now=10.002, outlook=outlook()).batch) == list(range(8))


def test_adaptive_wait_ends_when_the_expected_items_are_in() -> None:
    decision = next_batch(queued(*[10.0] * 12), ADAPTIVE, now=10.001, outlook=outlook(expected=12.2))
    assert items(decision.batch) == list(range(12))


def test_adaptive_wait_never_holds_what_usually_comes_alone() -> None:
    """One client: one item is all that ever arrives after the runner frees."""
    decision = next_batch(queued(10.0005), ADAPTIVE, now=10.0005, outlook=outlook(expected=1.0))
    assert items(decision.batch) == [0]


def test_adaptive_wait_never_holds_after_the_runner_has_been_idle() -> None:
    decision = next_batch(queued(50.0), ADAPTIVE, now=50.0, outlook=outlook(freed_at=10.0))
    assert items(decision.batch) == [0]


def test_adaptive_wait_is_off_at_zero() -> None:
    config = BatchingConfig(max_batch_size=16, max_adaptive_delay=0.0)
    assert items(next_batch(queued(10.0), config, now=10.0, outlook=outlook()).batch) == [0]


def test_adaptive_wait_is_nothing_when_per_item_cost_dominates() -> None:
    decision = next_batch(queued(10.0), ADAPTIVE, now=10.0, outlook=outlook(per_item=0.001, fixed=0.0))
    assert items(decision.batch) == [0]


def test_adaptive_wait_shrinks_with_the_fixed_costs_share() -> None:
    config = BatchingConfig(max_batch_size=16, max_adaptive_delay=1.0)
    # 16 expected: 5 ms fixed + 8 ms per-item; the wait is 5 ms x 5/13.
    decision = next_batch(queued(10.0), config, now=10.0, outlook=outlook(per_item=0.0005))
    assert decision.wake_at == pytest.approx(10.0 + 0.005 * 0.005 / 0.013)


def test_adaptive_wait_leaves_in_time_to_finish_by_the_earliest_deadline() -> None:
    pending = [*queued(10.0), *queued(10.0, deadline=10.0065)]
    waiting = next_batch(pending, ADAPTIVE, now=10.0, outlook=outlook())
    # 10.0065 less the 5 ms a batch takes: 10.0015, before the 10.002 it would have waited.
    assert waiting.wake_at == pytest.approx(10.0015)
    assert len(next_batch(pending, ADAPTIVE, now=10.0015, outlook=outlook()).batch) == 2


def test_an_item_too_close_to_its_deadline_is_never_held() -> None:
    decision = next_batch(queued(10.0, deadline=10.004), ADAPTIVE, now=10.0, outlook=outlook())
    assert items(decision.batch) == [0]


def test_with_both_delays_a_batch_leaves_when_neither_holds_it() -> None:
    config = BatchingConfig(max_batch_size=16, max_queue_delay=0.003, max_adaptive_delay=0.002)
    assert next_batch(queued(10.0), config, now=10.0, outlook=outlook()).wake_at == pytest.approx(10.003)
    late_runner = outlook(freed_at=10.002)
    assert next_batch(queued(10.0), config, now=10.0025, outlook=late_runner).wake_at == pytest.approx(10.004)


def test_adaptive_wait_never_holds_for_a_steady_stream() -> None:
    """Independent callers arrive as fast whether the batch waits or not: waiting only adds latency."""
    decision = next_batch(queued(*[9.99] * 4), ADAPTIVE, now=10.0, outlook=outlook(expected=6.0, surge=0.2))
    assert len(decision.batch) == 4


def test_the_most_urgent_priority_goes_first_and_alone() -> None:
    """Background work (priority 1) queued first still waits for urgent items behind it, and
    never shares their batch: it delays them by at most the batch it is in."""
    config = BatchingConfig(max_batch_size=4)
    background = [Pending(item=i, cost=1, enqueued_at=0.0, priority=1) for i in range(3)]
    urgent = [Pending(item=10 + i, cost=1, enqueued_at=1.0) for i in range(2)]
    decision = next_batch([*background, *urgent], config, now=2.0)
    assert [p.item for p in decision.batch] == [10, 11]
    assert [p.item for p in decision.rest] == [0, 1, 2]
    alone = next_batch(decision.rest, config, now=2.0)
    assert [p.item for p in alone.batch] == [0, 1, 2] and alone.rest == []


def test_a_partial_urgent_batch_may_wait_but_not_for_background_items() -> None:
    config = BatchingConfig(max_batch_size=4, max_queue_delay=0.5)
    pending = [Pending(item=0, cost=1, enqueued_at=0.0, priority=1), Pending(item=1, cost=1, enqueued_at=1.0)]
    held = next_batch(pending, config, now=1.2)
    assert held.batch == [] and held.wake_at == 1.5 and [p.item for p in held.rest] == [1, 0]
    assert [p.item for p in next_batch(pending, config, now=1.5).batch] == [1]
