"""The async micro-batcher: a bounded queue in front of one batch-at-a-time runner.

Callers ``await submit(item)``. One background task forms batches with ``next_batch`` and
awaits the batch function; while it runs, new items queue up and leave together as the next
batch the moment it returns. A failing batch is bisected so that one bad item fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable, Generic, Protocol, Sequence, TypeVar

from batching.clock import Clock, MonotonicClock
from batching.config import BatchingConfig
from batching.errors import BatcherClosed, BatchResultMismatch, DeadlineExceeded, Overloaded
from batching.policy import Pending, next_batch

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

BatchFunction = Callable[[list[T]], Awaitable[Sequence[R]]]


class BatchObserver(Protocol):
    """What the batcher reports, for metrics. It has no idea who listens."""

    def batch_done(self, size: int, queue_waits: Sequence[float], run_seconds: float, failed: bool) -> None: ...

    def queue_depth(self, cost: int) -> None: ...

    def rejected(self, cost: int) -> None: ...

    def expired(self, count: int) -> None: ...

    def abandoned(self, count: int) -> None: ...


class _NullObserver:
    def batch_done(self, size: int, queue_waits: Sequence[float], run_seconds: float, failed: bool) -> None:
        pass

    def queue_depth(self, cost: int) -> None:
        pass

    def rejected(self, cost: int) -> None:
        pass

    def expired(self, count: int) -> None:
        pass

    def abandoned(self, count: int) -> None:
        pass


def _one(item: object) -> int:
    return 1


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: BatchFunction[T, R],
        config: BatchingConfig,
        *,
        cost: Callable[[T], int] = _one,
        clock: Clock | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._config = config
        self._cost = cost
        self._clock: Clock = clock or MonotonicClock()
        self._observer: BatchObserver = observer or _NullObserver()
        self._pending: list[Pending[T]] = []
        self._in_flight: list[Pending[T]] = []
        self._queued_cost = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Smoothed seconds per batch, for Retry-After; seeded pessimistically.
        self._batch_seconds = 0.1

    @property
    def config(self) -> BatchingConfig:
        return self._config

    @property
    def queued_cost(self) -> int:
        return self._queued_cost

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def submit(self, item: T, *, deadline: float | None = None) -> R:
        """Queue ``item`` and wait for its result.

        Raises ``Overloaded`` at once when the queue is full, ``DeadlineExceeded`` when the
        deadline (on the batcher's clock) passes before the item is sent, ``BatcherClosed``
        during shutdown, and whatever the batch function raised for this item.
        """
        if self._closing or self._task is None:
            raise BatcherClosed("the batcher is not accepting work")
        cost = self._cost(item)
        if self._queued_cost + cost > self._config.max_queue_size:
            self._observer.rejected(cost)
            raise Overloaded(self._retry_after(), self._queued_cost, self._config.max_queue_size)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append(Pending(item, cost, self._clock.now(), deadline, future))
        self._queued_cost += cost
        self._observer.queue_depth(self._queued_cost)
        self._wakeup.set()
        # If our caller is cancelled, the future is cancelled with it, and the loop drops
        # the item before it reaches the runner.
        return await future

    async def close(self, drain_timeout: float) -> None:
        """Stop intake, finish what is queued within ``drain_timeout``, fail the rest."""
        self._closing = True
        self._wakeup.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=drain_timeout)
        except asyncio.TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for p in self._in_flight + self._pending:
            _fail(p, BatcherClosed("shut down before this item could finish"))
        self._pending = []
        self._in_flight = []

    def _retry_after(self) -> float:
        batches_ahead = self._queued_cost / self._config.max_batch_size + 1
        return batches_ahead * self._batch_seconds

    async def _loop(self) -> None:
        while True:
            decision = next_batch(self._pending, self._config, self._clock.now())
            self._pending = decision.rest
            self._queued_cost = sum(p.cost for p in self._pending)
            self._observer.queue_depth(self._queued_cost)
            if decision.expired:
                self._observer.expired(len(decision.expired))
                for p in decision.expired:
                    _fail(p, DeadlineExceeded("deadline passed while queued"))
            if decision.abandoned:
                self._observer.abandoned(len(decision.abandoned))
            if decision.batch:
                self._in_flight = decision.batch
                await self._execute(decision.batch)
                self._in_flight = []
                continue
            if self._closing and not self._pending:
                return
            # No await between deciding and clearing, so no submit can slip in unseen.
            self._wakeup.clear()
            await self._clock.wait(self._wakeup, decision.wake_at)

    async def _execute(self, batch: list[Pending[T]]) -> None:
        started = self._clock.now()
        waits = [started - p.enqueued_at for p in batch]
        try:
            results = await self._run_batch([p.item for p in batch])
            if len(results) != len(batch):
                raise BatchResultMismatch(f"{len(results)} results for {len(batch)} items")
        except Exception as exc:
            elapsed = self._clock.now() - started
            self._observer.batch_done(sum(p.cost for p in batch), waits, elapsed, failed=True)
            await self._isolate_failure(batch, exc)
            return
        elapsed = self._clock.now() - started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        self._observer.batch_done(sum(p.cost for p in batch), waits, elapsed, failed=False)
        for p, result in zip(batch, results, strict=True):
            if p.future is not None and not p.future.done():
                p.future.set_result(result)

    async def _isolate_failure(self, batch: list[Pending[T]], exc: Exception) -> None:
        """Bisect a failed batch: healthy items still get results, a poisoned one fails alone."""
        live = [p for p in batch if not p.abandoned]
        if len(live) <= 1:
            for p in live:
                log.warning("batch item failed: %r", exc)
                _fail(p, exc)
            return
        middle = len(live) // 2
        await self._execute(live[:middle])
        await self._execute(live[middle:])


def _fail(p: Pending[T], exc: BaseException) -> None:
    if p.future is not None and not p.future.done():
        p.future.set_exception(exc)
