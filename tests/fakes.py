"""Test doubles: a clock that moves only when told, and a batch runner the test controls."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Sequence

import numpy as np


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until the loop is idle again (no wall-clock sleeping)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class ManualClock:
    def __init__(self, start: float = 100.0) -> None:
        self._now = start
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        for until, timer in self._timers:
            if until <= self._now and not timer.done():
                timer.set_result(None)

    async def wait(self, event: asyncio.Event, until: float | None) -> None:
        if until is None:
            await event.wait()
            return
        if until <= self._now:
            return
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (until, timer)
        self._timers.append(entry)
        event_task = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({event_task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            event_task.cancel()
            self._timers.remove(entry)


class FakeRunner:
    """Records each batch; with ``hold=True`` every call waits until the test releases it.

    Results are ``item * 10``; an item equal to ``poison`` makes the whole call raise, as a
    corrupt tensor would make a real runtime fail the batch it is in.
    """

    def __init__(self, hold: bool = False, poison: object = None) -> None:
        self.hold = hold
        self.poison = poison
        self.calls: list[list[int]] = []
        self._gates: list[asyncio.Event] = []

    async def __call__(self, items: list[int]) -> Sequence[int]:
        self.calls.append(list(items))
        if self.hold:
            gate = asyncio.Event()
            self._gates.append(gate)
            await gate.wait()
        if self.poison is not None and self.poison in items:
            raise ValueError(f"cannot run item {self.poison}")
        return [i * 10 for i in items]

    def release(self) -> None:
        """Let the oldest waiting call finish."""
        self._gates.pop(0).set()

    @property
    def waiting(self) -> int:
        return len(self._gates)


class RecordingObserver:
    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.failed_batches = 0
        self.rejected_cost = 0
        self.expired_count = 0
        self.abandoned_count = 0
        self.depths: list[int] = []
        self.latency = (0.0, 0.0)

    def batch_done(self, size: int, queue_waits: Sequence[float], run_seconds: float, failed: bool) -> None:
        self.batch_sizes.append(size)
        self.failed_batches += failed

    def queue_depth(self, cost: int) -> None:
        self.depths.append(cost)

    def rejected(self, cost: int) -> None:
        self.rejected_cost += cost

    def expired(self, count: int) -> None:
        self.expired_count += count

    def abandoned(self, count: int) -> None:
        self.abandoned_count += count

    def latency_model(self, per_item: float, fixed: float) -> None:
        self.latency = (per_item, fixed)


class GatedRuntime:
    """A runtime whose ``predict`` blocks (on the inference thread) while the gate is shut.

    Scores put all mass on class ``pixel % classes`` of each image's first pixel. An image
    whose first pixel is ``poison`` makes the whole batch raise, like a runtime fault.
    """

    def __init__(self, classes: int = 10, poison: int = 13) -> None:
        self.classes = classes
        self.poison = poison
        self.gate = threading.Event()
        self.gate.set()
        self.batch_sizes: list[int] = []
        self.entered = 0  # calls that reached predict, finished or still blocked
        self.seen: list[int] = []  # first pixel of every row run, padding included

    def predict(self, batch: Any) -> Any:
        self.entered += 1
        if not self.gate.wait(timeout=30):
            raise TimeoutError("test never opened the gate")
        self.batch_sizes.append(len(batch))
        first = batch[:, 0, 0, 0].astype(int)
        self.seen.extend(first.tolist())
        if (first == self.poison).any():
            raise RuntimeError("poisoned input")
        out = np.zeros((len(batch), self.classes), np.float32)
        out[np.arange(len(batch)), first % self.classes] = 1.0
        return out

    def close(self) -> None:
        pass
