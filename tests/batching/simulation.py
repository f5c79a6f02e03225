"""Virtual time for batcher tests: a model that takes time, clients that come back, no sleeping.

``VirtualClock`` keeps its timers in order; ``run_until`` lets every task run until the loop
is idle, then jumps the clock to the next timer, as a discrete-event simulation does. Runs
are deterministic, so tests can assert on exact batch sizes and wait times.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from batching import BatchingConfig, MicroBatcher
from tests.fakes import RecordingObserver, settle


class VirtualClock:
    def __init__(self, start: float = 100.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def _timer(self, until: float) -> asyncio.Future[None]:
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (until, next(self._order), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        await self._timer(self._now + seconds)

    async def wait(self, event: asyncio.Event, until: float | None) -> None:
        if until is None:
            await event.wait()
            return
        if until <= self._now:
            return
        timer = self._timer(until)
        event_task = asyncio.ensure_future(event.wait())
        either: set[asyncio.Future[Any]] = {event_task, timer}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            event_task.cancel()
            timer.cancel()

    def next_timer(self) -> float | None:
        while self._timers and self._timers[0][2].done():
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def advance_to(self, until: float) -> None:
        self._now = max(self._now, until)
        while self._timers and self._timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.done():
                timer.set_result(None)


async def run_until(clock: VirtualClock, end: float | None = None) -> None:
    """Run every task, moving time from timer to timer, until no timer is due by ``end``."""
    while True:
        await settle(60)
        due = clock.next_timer()
        if due is None or (end is not None and due > end):
            if end is not None:
                clock.advance_to(end)
                await settle(60)
            return
        clock.advance_to(due)


@dataclass
class Call:
    items: list[int]
    started: float
    finished: float | None = None


@dataclass
class SimulatedModel:
    """A batch function that takes ``fixed + per_item · cost`` seconds of virtual time."""

    clock: VirtualClock
    fixed: float
    per_item: float = 0.0
    cost: Callable[[int], int] = lambda item: 1
    calls: list[Call] = field(default_factory=list)

    async def __call__(self, items: list[int]) -> Sequence[int]:
        call = Call(list(items), self.clock.now())
        self.calls.append(call)
        await self.clock.sleep(self.fixed + self.per_item * sum(self.cost(i) for i in items))
        call.finished = self.clock.now()
        return [i * 10 for i in items]

    @property
    def sizes(self) -> list[int]:
        return [len(c.items) for c in self.calls]

    def dispatched_at(self, item: int) -> float:
        return next(c.started for c in self.calls if item in c.items)

    def freed_before(self, moment: float) -> float | None:
        """When the runner last became free at or before ``moment``."""
        ends = [c.finished for c in self.calls if c.finished is not None and c.finished <= moment]
        return max(ends, default=None)


class WaitRecorder(RecordingObserver):
    """Also keeps every item's time in the queue."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def batch_done(self, size: int, queue_waits: Sequence[float], run_seconds: float, failed: bool) -> None:
        super().batch_done(size, queue_waits, run_seconds, failed)
        self.waits.extend(queue_waits)


def batcher_for(model: SimulatedModel, observer: WaitRecorder | None = None, **config: Any) -> MicroBatcher[int, int]:
    batcher: MicroBatcher[int, int] = MicroBatcher(
        model, BatchingConfig(**config), clock=model.clock, cost=model.cost, observer=observer
    )
    batcher.start()
    return batcher


async def closed_loop(
    batcher: MicroBatcher[int, int], clock: VirtualClock, clients: int, return_delay: float, until: float
) -> None:
    """``clients`` callers, each resubmitting ``return_delay`` (plus a little, per client) after
    its answer, the way HTTP clients come back, until ``until``."""

    async def client(index: int) -> None:
        await clock.sleep(index * 1e-5)
        while clock.now() < until:
            await batcher.submit(index)
            await clock.sleep(return_delay + index * 1e-5)

    everyone = asyncio.gather(*(client(i) for i in range(clients)))
    await run_until(clock)  # the clients stop by themselves at ``until``
    await everyone
