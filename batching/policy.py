"""Batch formation as a pure function: (queued items, config, now) -> decision.

No event loop and no clock here, so every rule can be unit-tested by handing in "now".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Generic, Sequence, TypeVar

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


def next_batch(pending: Sequence[Pending[T]], config: BatchingConfig, now: float) -> BatchDecision[T]:
    """Decide what leaves the queue now, for a runner that is free to take a batch.

    FIFO by arrival. A batch takes items while their summed cost fits ``max_batch_size``
    (an item costlier than that goes alone). It leaves at once when full or when
    ``max_queue_delay`` is 0; otherwise it may wait for more items until the oldest has
    waited ``max_queue_delay``, but never past the earliest deadline among its items.
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

    size = 0
    taken = 0
    for p in live:
        if size + p.cost > config.max_batch_size and taken > 0:
            break
        size += p.cost
        taken += 1
    full = taken < len(live) or size >= config.max_batch_size

    if not full and config.max_queue_delay > 0:
        fill_until = live[0].enqueued_at + config.max_queue_delay
        deadlines = [p.deadline for p in live[:taken] if p.deadline is not None]
        wake_at = min([fill_until, *deadlines])
        if now < wake_at:
            return BatchDecision([], live, expired, abandoned, wake_at=wake_at)
    return BatchDecision(live[:taken], live[taken:], expired, abandoned)
