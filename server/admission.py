"""Admission: what the requests in progress may hold together, taken before the work it bounds.

Three budgets, each refused at once (429 with Retry-After) when full, never queued for:
- requests in progress, taken before a body is read and held until the last piece of the
  request's work (a decode thread, a queued image) has ended;
- bytes of request bodies being received or held;
- images being decoded or waiting for a model, taken once a request's image count is known
  and before any of them is decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from model_contract.errors import ErrorKind, ServiceError
from server.settings import LimitSettings

# A full budget frees up as requests finish, usually within a second: long enough to spread
# retries, short enough not to idle a client.
RETRY_AFTER_S = 1.0


class Count(Protocol):
    """Where a budget keeps what is taken: this process (``LocalCount``) or shared by the server's
    worker processes (``server.shared_limits``). Used from one thread, the event loop's."""

    def try_take(self, amount: int, capacity: int) -> bool:
        """Add ``amount`` if the total stays within ``capacity``; False, and nothing added, if not."""
        ...

    def give(self, amount: int) -> None: ...

    def in_use(self) -> int: ...


class LocalCount:
    """The count of one process."""

    def __init__(self) -> None:
        self.value = 0

    def try_take(self, amount: int, capacity: int) -> bool:
        if self.value + amount > capacity:
            return False
        self.value += amount
        return True

    def give(self, amount: int) -> None:
        self.value -= amount

    def in_use(self) -> int:
        return self.value


class Budget:
    """A counter with a capacity. ``take`` is all or nothing, and never waits."""

    def __init__(self, what: str, capacity: int, count: Count | None = None) -> None:
        self.what = what
        self.capacity = capacity
        self._count = count if count is not None else LocalCount()
        self._watchers: list[Callable[[int], None]] = []

    def watch(self, changed: Callable[[int], None]) -> None:
        """Call ``changed(amount)`` with what this process takes (+) and gives back (-)."""
        self._watchers.append(changed)

    @property
    def in_use(self) -> int:
        return self._count.in_use()

    def take(self, amount: int) -> None:
        if not self._count.try_take(amount, self.capacity):
            raise ServiceError(
                ErrorKind.OVERLOADED,
                f"server overloaded: {self.what} at {self.in_use} of {self.capacity}",
                retry_after=RETRY_AFTER_S,
            )
        for changed in self._watchers:
            changed(amount)

    def give(self, amount: int) -> None:
        self._count.give(amount)
        for changed in self._watchers:
            changed(-amount)

    @contextmanager
    def held(self, amount: int) -> Iterator[None]:
        self.take(amount)
        try:
            yield
        finally:
            self.give(amount)


class Admission:
    def __init__(
        self,
        limits: LimitSettings,
        *,
        requests: Count | None = None,
        body_bytes: Count | None = None,
        images: Count | None = None,
    ) -> None:
        """Counts left out are this process's own; ``server.shared_limits`` passes counts shared
        by all the server's workers, so a limit holds for the server, not for each worker."""
        self.limits = limits
        self.requests = Budget("requests in progress", limits.max_requests_in_progress, requests)
        self.body_bytes = Budget("bytes of request bodies in flight", limits.max_body_bytes_in_flight, body_bytes)
        self.images = Budget("images in progress", limits.max_images_in_progress, images)

    def max_images(self, queue_capacity: int) -> int:
        """Most images one request may carry: more than the limit per request, or than the
        model's queue holds, could never be admitted (the in-progress budget holds at least
        one request's worth, see LimitSettings)."""
        return min(self.limits.max_images_per_request, queue_capacity)

    @contextmanager
    def images_held(self, count: int, queue_capacity: int) -> Iterator[None]:
        """Admit ``count`` images of one request, all or none, for as long as the block runs:
        413 past ``max_images`` (no retry could help), 429 while the budget is full."""
        limit = self.max_images(queue_capacity)
        if count > limit:
            raise ServiceError(
                ErrorKind.TOO_MANY_IMAGES, f"{count} images in one request; at most {limit} are accepted"
            )
        with self.images.held(count):
            yield
