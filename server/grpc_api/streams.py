"""Streams that stay open as long as their client wants (health Watch, reflection): a few slots
of their own per process, so that anonymous watchers cannot take every call slot."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from model_contract.errors import ErrorKind, ServiceError

MAX_STREAMS = 32
"""Watch and reflection streams at once, per process (fewer when the connection limit is lower)."""
RETRY_AFTER_S = 5.0


class StreamSlots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        """A slot for the block; UNAVAILABLE with a retry hint when none is free."""
        if self.in_use >= self.capacity:
            raise ServiceError(
                ErrorKind.OVERLOADED, f"{self.capacity} watch and reflection streams are open", RETRY_AFTER_S
            )
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
