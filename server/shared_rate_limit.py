"""Sliding-window rate counts in a fixed-size table that the server's worker processes share, so
a client's limit holds for the server, not for each worker.

Why a table of our own rather than a ``limits`` storage backend over shared memory: the
library's sliding window keeps two string keys per client and window (``<key>/<window number>``),
each with its own expiry, and a hit costs a read of both, an increment, then a second read of
both for the headers: four operations on a shared table of string keys with expiry, plus the
rest of the ``Storage`` interface to fill in. Here one locked call finds the client's slot, rolls
its window, counts the hit and returns what the headers need, with the library's arithmetic
(the tests hold it to the library's answers on the same clock). ``RateLimiter`` is unchanged.

The table: ``slots`` (a power of two) slots of ``SLOT_WORDS`` int64 words each:
``key`` (a 64-bit hash of the client and the limit; 0: never used), ``window`` (its number,
now // length), the counts of that window and of the one before, ``dead_at`` (when both counts
have left the sliding window: the slot is free again) and ``last`` (the last hit, for eviction).
A key lives within ``PROBES`` slots of ``hash & mask`` (open addressing, linear probing).

A full neighbourhood never fails a request: a new client takes the first never-used or expired
slot among its ``PROBES``; when all of them are live, the least recently hit client is evicted
(and counted in ``evictions``) and starts over from zero: the limit becomes lenient for it, never
stricter for anyone, so a flood of new client addresses can neither fill the table nor refuse
other clients; the admission budgets still bound the load. Two clients whose 64-bit hashes
collide share one count (stricter for both), as likely as never. A worker killed in the middle
of a hit may leave one client's slot half written: that client's count is off for a window.

Windows are numbered on ``time.monotonic()`` (injectable), one clock for every process on the
machine: a wall-clock step neither resets nor stalls the windows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Protocol

import limits

from server.rate_limit import RateLimitState

SLOT_WORDS = 6
KEY, WINDOW, CURRENT, PREVIOUS, DEAD_AT, LAST = range(SLOT_WORDS)
# Slots a key may live in, from its home slot: a bounded cost per hit, and room enough that
# eviction starts only when a neighbourhood of 16 live clients is full.
PROBES = 16


def client_key(identity: str, amount: int, length_ms: int) -> int:
    """A stable 64-bit key for a client under one limit (``hash()`` differs per process), never 0."""
    text = f"{amount}/{length_ms}/{identity}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


class WindowTable:
    """The table's logic over ``words`` (int64), from ``base``; the caller holds the lock."""

    def __init__(self, words: memoryview, base: int, slots: int, evictions_at: int) -> None:
        if base + self.words_for(slots) > len(words):
            raise ValueError("the rate-limit table does not fit in its memory")
        self._words = words
        self._base = base
        self._mask = slots - 1
        self._probes = min(PROBES, slots)
        self._evictions_at = evictions_at

    @staticmethod
    def words_for(slots: int) -> int:
        """The words a table of ``slots`` needs; a ValueError for a number it cannot have."""
        if slots < 1 or slots & (slots - 1):
            raise ValueError(f"the rate-limit table needs a power of two of slots, not {slots}")
        return slots * SLOT_WORDS

    @property
    def evictions(self) -> int:
        """Live clients evicted so far to make room for new ones."""
        return self._words[self._evictions_at]

    def hit(self, key: int, limit: int, length_ms: int, now_ms: int, cost: int = 1) -> tuple[bool, int, int]:
        """Count ``cost`` for ``key`` unless it breaks ``limit`` per ``length_ms``:
        (allowed, remaining, milliseconds until one more request fits), as the ``limits``
        library's sliding-window counter answers them."""
        words = self._words
        at = self._slot(key, now_ms)
        # Never back in time: an earlier window would reset the counts of a later one.
        now_ms = max(now_ms, words[at + LAST])
        window = now_ms // length_ms
        seen = words[at + WINDOW]
        if seen != window:
            # The count of the window just ended carries over, weighted; older ones are gone.
            words[at + PREVIOUS] = words[at + CURRENT] if seen == window - 1 else 0
            words[at + CURRENT] = 0
            words[at + WINDOW] = window
            words[at + DEAD_AT] = (window + 2) * length_ms
        words[at + LAST] = now_ms
        previous = words[at + PREVIOUS]
        current = words[at + CURRENT]
        # The part of the previous window still inside the sliding window: until this one ends.
        to_end = (window + 1) * length_ms - now_ms
        # floor(previous * to_end / length + current), in integers: no rounding at the edges.
        used = previous * to_end // length_ms + current
        allowed = used + cost <= limit
        if allowed:
            current += cost
            used += cost
            words[at + CURRENT] = current
        return allowed, max(0, limit - used), _reset_ms(previous, current, to_end, length_ms)

    def _slot(self, key: int, now_ms: int) -> int:
        """The slot of ``key``: found, else a free one, else the least recently hit one."""
        words = self._words
        mask = self._mask
        free = -1
        oldest = -1
        oldest_ms = 0
        for probe in range(self._probes):
            at = self._base + ((key + probe) & mask) * SLOT_WORDS
            held = words[at + KEY]
            if held == key:
                return at
            if held == 0:
                # Slots are never emptied, only reused: no key lives past a never-used one.
                if free < 0:
                    free = at
                break
            if free >= 0:
                continue
            if words[at + DEAD_AT] <= now_ms:
                free = at
            elif oldest < 0 or words[at + LAST] < oldest_ms:
                oldest, oldest_ms = at, words[at + LAST]
        if free < 0:
            free = oldest
            words[self._evictions_at] += 1
        words[free + KEY] = key
        words[free + WINDOW] = -2  # no window: the hit starts both counts at zero
        words[free + CURRENT] = 0
        words[free + PREVIOUS] = 0
        return free


def _reset_ms(previous: int, current: int, to_end: int, length_ms: int) -> int:
    """Until the weighted count next drops: the previous window's weight loses one request
    every ``length / previous``, the current window's count leaves when it ends (0: nothing
    counted). In integers: to_end % (length / previous) is (to_end * previous % length) / previous."""
    if previous:
        reset = -(-(to_end * previous % length_ms) // previous)
        return min(reset, to_end % length_ms) if current else reset
    return to_end % length_ms if current else 0


class Exclusive(Protocol):
    def acquire(self) -> None: ...

    def release(self) -> None: ...


class SharedWindows:
    """A ``server.rate_limit.WindowCounter`` over a shared ``WindowTable``, one hit per lock."""

    def __init__(self, table: WindowTable, lock: Exclusive, clock: Callable[[], float] = time.monotonic) -> None:
        self._table = table
        self._lock = lock
        self._clock = clock

    def hit(self, item: limits.RateLimitItem, identity: str) -> RateLimitState:
        length_s = item.get_expiry()
        length_ms = length_s * 1000
        key = client_key(identity, item.amount, length_ms)
        self._lock.acquire()
        try:
            # Read under the lock, so that hits reach the table in the order of their times.
            now_ms = int(self._clock() * 1000)
            allowed, remaining, reset_ms = self._table.hit(key, item.amount, length_ms, now_ms)
        finally:
            self._lock.release()
        reset_s = max(1, -(-reset_ms // 1000))
        return RateLimitState(allowed, item.amount, remaining, reset_s, length_s)
