"""Time, injected: the batcher asks a clock for "now" and for a bounded wait.

Deadlines use a monotonic clock, never wall time. Tests pass a manual clock so that they
decide when time moves instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def wait(self, event: asyncio.Event, until: float | None) -> None:
        """Return when ``event`` is set or the clock reaches ``until`` (None: no time limit)."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, until: float | None) -> None:
        if until is None:
            await event.wait()
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(0.0, until - self.now()))
