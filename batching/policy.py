"""Batch formation as a pure function: (queued items, config, now) -> decision.

No event loop and no clock here, so every rule can be unit-tested by handing in "now".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

from batching.config import BatchingConfig

T = TypeVar("T")


@dataclass(eq=False)
class Pending(Generic[T]):
    """One queued item and the promise made to its caller."""

    item: T
    cost: int
    enqueued_at: float
    deadline: float | None = None
    future: asyncio.Future[Any] | None = field(default=None, repr=False)
    on_start: Callable[[float], None] | None = field(default=None, repr=False)
    """Told the batcher's time when the item's batch starts running (for tracing)."""
    priority: int = 0
    """Lower runs first: a batch takes only items of the most urgent priority waiting."""

    @property
    def abandoned(self) -> bool:
        """The caller is gone (cancelled, disconnected) or was already answered."""
        return self.future is not None and self.future.done()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass(frozen=True)
class BatchDecision(Generic[T]):
    batch: list[Pending[T]]
    """Send these now, in this order (empty: nothing to send yet)."""
    rest: list[Pending[T]]
    """Still queued, oldest first."""
    expired: list[Pending[T]]
    """Their deadline passed in the queue: answer them, never run them."""
    abandoned: list[Pending[T]]
    """Nobody waits for them any more: drop them."""
    wake_at: float | None = None
    """With an empty batch: when to decide again if nothing arrives (None: on arrival)."""


@dataclass(frozen=True)
class Outlook:
    """What the batcher has learnt beyond the queue: estimates, handed in so that
    ``next_batch`` stays a pure function. None of it is needed to batch correctly."""

    freed_at: float
    """When the runner last became free."""
    expected: float
    """Cost usually ready within ``max_adaptive_delay`` of the runner freeing, recently:
    what was queued then plus what arrived in that time."""
    surge: float
    """Cost usually arriving in that time beyond what a steady stream would bring: callers
    just answered coming back. Near 0 for independent arrivals, which a wait cannot gather
    any faster."""
    per_item: float
    """Fitted batch run time: ``per_item · n + fixed`` seconds."""
    fixed: float

    def run_seconds(self, size: float) -> float:
        return self.per_item * size + self.fixed


def next_batch(
    pending: Sequence[Pending[T]], config: BatchingConfig, now: float, outlook: Outlook | None = None
) -> BatchDecision[T]:
    """Decide what leaves the queue now, for a runner that is free to take a batch.

    FIFO by arrival, within the most urgent priority that has items waiting: a batch holds
    items of one priority, so background work (a higher number) runs only when nothing more
    urgent waits, and delays urgent work by at most the batch it is in.
    A batch takes items while their summed cost fits ``max_batch_size``
    (an item costlier than that goes alone). A full batch leaves at once. A partial one may
    be held for more items, by either of two rules, and leaves when neither holds it:

    - ``max_queue_delay``: until the oldest item has waited that long;
    - the adaptive wait (``max_adaptive_delay``, needs an ``outlook``): until
      ``outlook.freed_at + W``, while ``outlook.expected`` says more items are coming and
      ``outlook.surge`` says they come because the runner freed (answered callers returning),
      where W is the fixed cost's share of the predicted batch time times the fixed cost,
      capped by ``max_adaptive_delay``.
      Waiting W idles the runner W; it pays when it saves a later batch's fixed cost, so W
      stays below that cost and shrinks to nothing as per-item cost takes over.

    Neither holds an item past its deadline: with an outlook, a held batch leaves early
    enough to finish by its earliest deadline by the fitted run time.
    """
    live: list[Pending[T]] = []
    expired: list[Pending[T]] = []
    abandoned: list[Pending[T]] = []
    for p in pending:
        if p.abandoned:
            abandoned.append(p)
        elif p.expired(now):
            expired.append(p)
        else:
            live.append(p)
    if not live:
        return BatchDecision([], [], expired, abandoned)
    urgent = min(p.priority for p in live)
    others = [p for p in live if p.priority != urgent]
    if others:
        live = [p for p in live if p.priority == urgent]

    size = 0
    taken = 0
    for p in live:
        if size + p.cost > config.max_batch_size and taken > 0:
            break
        size += p.cost
        taken += 1
    full = taken < len(live) or size >= config.max_batch_size

    if not full:
        holds = []
        if config.max_queue_delay > 0:
            holds.append(live[0].enqueued_at + config.max_queue_delay)
        expected_size = float(size)
        if outlook is not None:
            adaptive = _adaptive_hold(size, config, outlook)
            if adaptive is not None:
                holds.append(adaptive)
                expected_size = min(float(config.max_batch_size), outlook.expected)
        if holds:
            wake_at = max(holds)
            deadlines = [p.deadline for p in live[:taken] if p.deadline is not None]
            if deadlines:
                run = outlook.run_seconds(expected_size) if outlook is not None else 0.0
                wake_at = min(wake_at, min(deadlines) - run)
            if now < wake_at:
                return BatchDecision([], live + others, expired, abandoned, wake_at=wake_at)
    return BatchDecision(live[:taken], live[taken:] + others, expired, abandoned)


def _adaptive_hold(size: int, config: BatchingConfig, outlook: Outlook) -> float | None:
    """Until when a partial batch of ``size`` may wait for the items expected to arrive."""
    expected = min(float(config.max_batch_size), outlook.expected)
    if config.max_adaptive_delay <= 0 or expected - size < 0.5 or outlook.surge < 1.0:
        return None  # not one more item expected (rounded), or none that waiting gathers sooner
    run = outlook.run_seconds(expected)
    if run <= 0:
        return None
    wait = min(config.max_adaptive_delay, outlook.fixed * (outlook.fixed / run))
    return outlook.freed_at + wait
