"""Typed failures of the batcher. They carry no HTTP: the server maps them to status codes."""

from __future__ import annotations


class BatchingError(Exception):
    """Base class for everything the batcher raises on its own account."""


class Overloaded(BatchingError):
    """The queue is full: the caller should come back after ``retry_after`` seconds."""

    def __init__(self, retry_after: float, queued: int, capacity: int, reason: str = "queue full") -> None:
        super().__init__(f"{reason}; retry in {retry_after:.2f}s")
        self.reason = reason
        self.retry_after = retry_after
        self.queued = queued
        self.capacity = capacity


class RequestTooLarge(BatchingError):
    """The request costs more than the whole queue holds: no retry can ever admit it."""

    def __init__(self, cost: int, capacity: int) -> None:
        super().__init__(f"a request of cost {cost} exceeds the queue's capacity of {capacity}")
        self.cost = cost
        self.capacity = capacity


class DeadlineExceeded(BatchingError):
    """The item's deadline passed while it was queued; it never reached the runner."""


class BatcherClosed(BatchingError):
    """The batcher is shutting down and takes no new work."""


class BatchResultMismatch(BatchingError):
    """The batch callable broke its contract: one result per item, in order."""
