"""CPU budgets per client: what a client's requests may make the server spend on the work pool
(parsing JSON, converting tensors, decoding images), in CPU-seconds per second.

A request rate limit counts requests, but their costs differ a thousandfold: a 130 KB PNG
that decodes to 117 MB costs as much CPU as seventeen photos through the model. A budget on
CPU bounds what a client can take from the others whatever requests it picks. The cost is
measured (thread CPU time of its work) and paid after the fact from a bucket that refills at
the client's share; a client in debt gets 429 at the door until the debt is paid.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

from model_contract.errors import ErrorKind, ServiceError

T = TypeVar("T")


class CpuBudgets:
    def __init__(self, burst_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        """``burst_s``: a client may run ahead by this many seconds' worth of its share."""
        self._burst_s = burst_s
        self._clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}  # identity: (tokens, when)
        self._lock = threading.Lock()  # charged from the work pool's threads

    def _tokens_now(self, identity: str, share: float) -> float:
        full = share * self._burst_s
        tokens, when = self._tokens.get(identity, (full, 0.0))
        now = self._clock()
        tokens = min(full, tokens + (now - when) * share)
        if tokens >= full:
            self._tokens.pop(identity, None)  # a full bucket is no bucket: only debtors take memory
        else:
            self._tokens[identity] = (tokens, now)
        return tokens

    def retry_after(self, identity: str, share: float) -> float | None:
        """None while the client may start work; else the seconds until its debt is paid."""
        with self._lock:
            tokens = self._tokens_now(identity, share)
        return None if tokens > 0 else -tokens / share

    def spent_most(self, identity: str, share: float) -> bool:
        """Whether the client has used over half of its bucket: a heavy user right now."""
        with self._lock:
            return self._tokens_now(identity, share) < share * self._burst_s / 2

    def charge(self, identity: str, share: float, seconds: float) -> None:
        with self._lock:
            tokens = self._tokens_now(identity, share) - seconds
            self._tokens[identity] = (tokens, self._clock())

    def __len__(self) -> int:
        return len(self._tokens)


@dataclass(frozen=True)
class CpuAccount:
    """The budget a request's work is charged to."""

    budgets: CpuBudgets
    identity: str
    share: float

    def charge(self, seconds: float) -> None:
        self.budgets.charge(self.identity, self.share, seconds)

    def heavy(self) -> bool:
        return self.budgets.spent_most(self.identity, self.share)

    def check(self) -> None:
        """429 while in debt. Checked at the door and again before each piece of work starts,
        so work admitted together cannot all start on credit that the first one spends."""
        retry_after = self.budgets.retry_after(self.identity, self.share)
        if retry_after is not None:
            raise ServiceError(
                ErrorKind.RATE_LIMITED,
                f"CPU budget of {self.share:g} CPU-seconds per second spent; wait for it to refill",
                retry_after=retry_after,
            )


# Set by access control for the request being handled; tasks and calls made while handling
# it see it, so the work pool charges the right client without being told.
current_account: ContextVar[CpuAccount | None] = ContextVar("current_account", default=None)


def charged(call: Callable[[], T], account: CpuAccount) -> Callable[[], T]:
    """``call``, charging the CPU time of the thread that runs it to ``account``."""

    def timed() -> T:
        account.check()
        started = time.thread_time()
        try:
            return call()
        finally:
            account.charge(time.thread_time() - started)

    return timed
