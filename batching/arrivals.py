"""Whether items are on their way when the runner frees: the evidence for a short wait.

Under load, many callers resubmit as soon as they are answered, so their next items arrive
a moment after the batch that answered them ends, just too late for the next batch. Each
time the runner frees, this looks at the ``window`` seconds that follow and keeps two smoothed
figures:

- ``expected``: the cost queued when the runner freed plus the cost that arrived in the
  window: the batch the runner could have had by waiting;
- ``surge``: how much more arrived in the window than a steady stream, at the rate seen while
  the runner was busy, would have brought. Answered callers coming back make it large; an
  open stream of independent requests keeps it near zero, and waiting for those would only
  add latency, since they arrive at the same rate whether the batch waits or not.

The averages weigh the last ten or so batches (``smoothing`` 0.1): slow enough that the
chance bunching of independent arrivals rarely looks like a surge, fast enough to follow a
change of load within a few tens of batches.
"""

from __future__ import annotations


class ArrivalTracker:
    def __init__(self, window: float, smoothing: float = 0.1) -> None:
        if window < 0:
            raise ValueError("window must not be negative")
        if not 0 < smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        self._window = window
        self._smoothing = smoothing
        self._freed_at: float | None = None
        self._queued = 0
        self._steady = 0.0
        self._after = 0
        self._seen = False
        self._expected = 0.0
        self._surge = 0.0

    @property
    def freed_at(self) -> float | None:
        """When the runner last became free (None: no batch has finished yet)."""
        return self._freed_at

    @property
    def expected(self) -> float:
        """Cost usually ready within the window after the runner frees (0 until seen)."""
        return self._expected

    @property
    def surge(self) -> float:
        """Cost that usually arrives in that window beyond a steady stream's (0 until seen)."""
        return self._surge

    def runner_freed(self, now: float, queued: int, busy_seconds: float) -> None:
        """A batch that ran ``busy_seconds`` finished with ``queued`` cost waiting: fold the
        last window into the averages and open a new one."""
        if self._freed_at is not None:
            ready, surge = self._queued + self._after, self._after - self._steady
            a = self._smoothing if self._seen else 1.0
            self._expected += a * (ready - self._expected)
            self._surge += a * (surge - self._surge)
            self._seen = True
        self._freed_at = now
        self._queued = queued
        self._steady = queued * self._window / busy_seconds if busy_seconds > 0 else 0.0
        self._after = 0

    def arrival(self, now: float, cost: int) -> None:
        if self._freed_at is not None and now <= self._freed_at + self._window:
            self._after += cost
