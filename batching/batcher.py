"""The async micro-batcher: a bounded queue in front of a runner that takes batches.

Callers ``await submit(item)`` (or ``submit_many``). One background task forms batches with
``next_batch`` whenever fewer than ``max_concurrent_batches`` are running; while they run,
new items queue up and leave together the moment a slot frees (or a moment later, when the
recent load says more are on their way and the fixed cost of a batch makes waiting for them
pay: see ``next_batch`` and ``ArrivalTracker``). A failing batch is bisected
so that one bad item fails alone. Admission is bounded twice: by queue size, and by time —
a request the fitted latency model says cannot run before its deadline is refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable, Generic, Protocol, Sequence, TypeVar

from batching.arrivals import ArrivalTracker
from batching.clock import Clock, MonotonicClock
from batching.config import BatchingConfig
from batching.errors import BatcherClosed, BatchResultMismatch, DeadlineExceeded, Overloaded, RequestTooLarge
from batching.latency import LatencyModel
from batching.policy import Outlook, Pending, next_batch

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

BatchFunction = Callable[[list[T]], Awaitable[Sequence[R]]]

# Before the latency model has seen a batch, Retry-After still needs a figure.
_UNKNOWN_BATCH_SECONDS = 0.1


class BatchObserver(Protocol):
    """What the batcher reports, for metrics. It has no idea who listens."""

    def batch_done(self, size: int, queue_waits: Sequence[float], run_seconds: float, failed: bool) -> None: ...

    def queue_depth(self, cost: int) -> None: ...

    def rejected(self, cost: int) -> None: ...

    def expired(self, count: int) -> None: ...

    def abandoned(self, count: int) -> None: ...

    def latency_model(self, per_item: float, fixed: float) -> None: ...


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

    def latency_model(self, per_item: float, fixed: float) -> None:
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
        latency: LatencyModel | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._config = config
        self._cost = cost
        self._clock: Clock = clock or MonotonicClock()
        self._observer: BatchObserver = observer or _NullObserver()
        self.latency = latency or LatencyModel()
        self._pending: list[Pending[T]] = []
        self._running: dict[asyncio.Task[None], list[Pending[T]]] = {}
        self._queued_cost = 0
        self._arrivals = ArrivalTracker(window=config.max_adaptive_delay)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

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

        Raises ``Overloaded`` at once when the queue is full or the item could not run before
        its deadline, ``RequestTooLarge`` when it costs more than the whole queue holds,
        ``DeadlineExceeded`` when the deadline (on the batcher's clock) passes before it is
        sent, ``BatcherClosed`` during shutdown, and whatever the batch function raised for
        this item.
        """
        (future,) = self._admit([item], deadline)
        return await future

    async def submit_many(
        self,
        items: Sequence[T],
        *,
        deadline: float | None = None,
        on_start: Callable[[float], None] | None = None,
        priority: int = 0,
    ) -> list[R]:
        """Queue several items at once, all or none, and return their results in order.

        They queue back to back, so a request larger than ``max_batch_size`` is cut across
        consecutive batches. The first failure is raised, and the rest are withdrawn.
        ``on_start`` is told the batcher's time whenever a batch holding some of them starts
        (more than once when they span batches): where their queueing ended, for tracing.
        ``priority``: lower runs first (0, the default, is the most urgent; see ``next_batch``).
        """
        futures = self._admit(items, deadline, on_start, priority)
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()  # no-op on the finished ones; drops the rest from the queue

    def _admit(
        self,
        items: Sequence[T],
        deadline: float | None,
        on_start: Callable[[float], None] | None = None,
        priority: int = 0,
    ) -> list[asyncio.Future[R]]:
        if self._closing or self._task is None:
            raise BatcherClosed("the batcher is not accepting work")
        costs = [self._cost(item) for item in items]
        total = sum(costs)
        if total > self._config.max_queue_size:
            self._observer.rejected(total)
            raise RequestTooLarge(total, self._config.max_queue_size)
        now = self._clock.now()
        if self._queued_cost + total > self._config.max_queue_size:
            self._reject(total, f"queue full ({self._queued_cost}/{self._config.max_queue_size} queued)")
        if deadline is not None and self.latency.ready:
            finish = now + self._estimated_wait(self._queued_cost + total)
            if finish > deadline:
                self._reject(total, f"the queue needs {finish - now:.3f}s, more than the deadline allows")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = []
        for item, cost in zip(items, costs, strict=True):
            future: asyncio.Future[R] = loop.create_future()
            self._pending.append(Pending(item, cost, now, deadline, future, on_start, priority))
            futures.append(future)
        self._queued_cost += total
        self._arrivals.arrival(now, total)
        self._observer.queue_depth(self._queued_cost)
        self._wakeup.set()
        return futures

    def _reject(self, cost: int, reason: str) -> None:
        self._observer.rejected(cost)
        raise Overloaded(self._retry_after(), self._queued_cost, self._config.max_queue_size, reason)

    def _estimated_wait(self, queued: int) -> float:
        """Until ``queued`` items have run: the batches in flight, then the queue."""
        in_flight = sum(self.latency.predict(sum(p.cost for p in batch)) for batch in self._running.values())
        slots = self._config.max_concurrent_batches
        return in_flight / slots + self.latency.drain_seconds(queued, self._config.max_batch_size, slots)

    def _retry_after(self) -> float:
        if not self.latency.ready:
            return (self._queued_cost / self._config.max_batch_size + 1) * _UNKNOWN_BATCH_SECONDS
        return self._estimated_wait(self._queued_cost)

    async def close(self, drain_timeout: float) -> None:
        """Stop intake, finish what is queued within ``drain_timeout``, fail the rest."""
        self._closing = True
        self._wakeup.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=drain_timeout)
            return
        except asyncio.TimeoutError:
            pass
        # Snapshot first: a cancelled batch task removes itself from _running when it ends.
        stranded = [p for batch in self._running.values() for p in batch] + self._pending
        self._pending = []
        self._task.cancel()
        for running in list(self._running):
            running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for p in stranded:
            _fail(p, BatcherClosed("shut down before this item could finish"))

    async def _loop(self) -> None:
        while True:
            wake_at: float | None = None
            if len(self._running) < self._config.max_concurrent_batches:
                decision = next_batch(self._pending, self._config, self._clock.now(), self._outlook())
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
                    self._launch(decision.batch)
                    continue
                wake_at = decision.wake_at
            if self._closing and not self._pending and not self._running:
                return
            # No await between deciding and clearing, so no submit or finished batch can
            # slip in unseen: both set the event.
            self._wakeup.clear()
            await self._clock.wait(self._wakeup, wake_at)

    def _outlook(self) -> Outlook | None:
        freed_at = self._arrivals.freed_at
        if freed_at is None or not self.latency.ready:
            return None
        arrivals = self._arrivals
        return Outlook(freed_at, arrivals.expected, arrivals.surge, self.latency.per_item, self.latency.fixed)

    def _launch(self, batch: list[Pending[T]]) -> None:
        task = asyncio.get_running_loop().create_task(self._execute(batch))
        self._running[task] = batch
        launched = self._clock.now()

        def finished(done: asyncio.Task[None]) -> None:
            self._running.pop(done, None)
            now = self._clock.now()
            self._arrivals.runner_freed(now, self._queued_cost, busy_seconds=now - launched)
            self._wakeup.set()

        task.add_done_callback(finished)

    async def _execute(self, batch: list[Pending[T]]) -> None:
        started = self._clock.now()
        waits = [started - p.enqueued_at for p in batch]
        for told in {p.on_start for p in batch if p.on_start is not None}:
            told(started)
        size = sum(p.cost for p in batch)
        try:
            results = await self._run_batch([p.item for p in batch])
            if len(results) != len(batch):
                raise BatchResultMismatch(f"{len(results)} results for {len(batch)} items")
        except Exception as exc:
            self._observer.batch_done(size, waits, self._clock.now() - started, failed=True)
            await self._isolate_failure(batch, exc)
            return
        elapsed = self._clock.now() - started
        self.latency.observe(size, elapsed)
        self._observer.latency_model(self.latency.per_item, self.latency.fixed)
        self._observer.batch_done(size, waits, elapsed, failed=False)
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
