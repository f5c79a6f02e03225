"""Admission: what the requests in progress may hold together, taken before the work it bounds.

Three budgets, each refused at once (429 with Retry-After) when full, never queued for:
- requests in progress, taken before a body is read and held until the last piece of the
  request's work (a decode thread, a queued image) has ended;
- bytes of request bodies being received or held;
- images being decoded or waiting for a model, taken once a request's image count is known
  and before any of them is decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from model_contract.errors import ErrorKind, ServiceError
from server.settings import LimitSettings

# A full budget frees up as requests finish, usually within a second: long enough to spread
# retries, short enough not to idle a client.
RETRY_AFTER_S = 1.0


class Budget:
    """A counter with a capacity. ``take`` is all or nothing, and never waits."""

    def __init__(self, what: str, capacity: int) -> None:
        self.what = what
        self.capacity = capacity
        self.in_use = 0

    def take(self, amount: int) -> None:
        if self.in_use + amount > self.capacity:
            raise ServiceError(
                ErrorKind.OVERLOADED,
                f"server overloaded: {self.what} at {self.in_use} of {self.capacity}",
                retry_after=RETRY_AFTER_S,
            )
        self.in_use += amount

    def give(self, amount: int) -> None:
        self.in_use -= amount

    @contextmanager
    def held(self, amount: int) -> Iterator[None]:
        self.take(amount)
        try:
            yield
        finally:
            self.give(amount)


class Admission:
    def __init__(self, limits: LimitSettings) -> None:
        self.limits = limits
        self.requests = Budget("requests in progress", limits.max_requests_in_progress)
        self.body_bytes = Budget("bytes of request bodies in flight", limits.max_body_bytes_in_flight)
        self.images = Budget("images in progress", limits.max_images_in_progress)

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
