"""Requests per client, counted by the ``limits`` library, with the numbers a client needs to
pace itself (the IETF RateLimit header fields and Retry-After).

Sliding-window counters: O(1) per client, approximate at window edges. Kept in this process's
memory by default (``LocalWindows``, expired by the library so a stream of new client addresses
does not grow without bound), or in memory shared by the server's worker processes so that a
limit holds for the server, not for each worker (``server.shared_rate_limit``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import limits
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter


@dataclass(frozen=True)
class RateLimitState:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    window_s: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Policy": f"{self.limit};w={self.window_s}",
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }


class WindowCounter(Protocol):
    """Counts one client's requests under one limit."""

    def hit(self, item: limits.RateLimitItem, identity: str) -> RateLimitState:
        """Count one request of ``identity`` unless it breaks ``item``; the state after it."""
        ...


class LocalWindows:
    """The ``limits`` library's sliding-window counters in this process's memory."""

    def __init__(self) -> None:
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())

    def hit(self, item: limits.RateLimitItem, identity: str) -> RateLimitState:
        allowed = self._limiter.hit(item, identity)
        stats = self._limiter.get_window_stats(item, identity)
        # The library reports the reset as wall-clock epoch seconds.
        reset_s = max(1, math.ceil(stats.reset_time - time.time()))
        return RateLimitState(allowed, item.amount, stats.remaining, reset_s, item.get_expiry())


class RateLimiter:
    def __init__(self, spec: str | None, windows: WindowCounter | None = None) -> None:
        """``spec``: the limit for clients without one of their own (None: unlimited);
        ``windows``: where the counts are kept, this process's memory unless given."""
        self._default = spec
        self._parsed: dict[str, list[limits.RateLimitItem]] = {}
        self._windows = windows if windows is not None else LocalWindows()

    def _items(self, spec: str) -> list[limits.RateLimitItem]:
        if spec not in self._parsed:
            self._parsed[spec] = limits.parse_many(spec)
        return self._parsed[spec]

    def hit(self, identity: str, spec: str | None = None) -> RateLimitState | None:
        """Count one request of ``identity`` under its own ``spec`` or the default; the state
        of the first limit it breaks, else of the limit closest to breaking; None: unlimited."""
        spec = spec or self._default
        if spec is None:
            return None
        states = []
        for item in self._items(spec):
            state = self._windows.hit(item, identity)
            if not state.allowed:
                return state
            states.append(state)
        return min(states, key=lambda s: s.remaining)
