"""A deadline-aware asyncio micro-batcher, generic over items and results.

It knows nothing of HTTP or of any ML framework: it batches items for an async callable
that takes a list of items and returns one result per item.
"""

from batching.arrivals import ArrivalTracker
from batching.batcher import BatchObserver, MicroBatcher
from batching.clock import Clock, MonotonicClock
from batching.config import BatchingConfig
from batching.errors import (
    BatcherClosed,
    BatchingError,
    BatchResultMismatch,
    DeadlineExceeded,
    Overloaded,
    RequestTooLarge,
)
from batching.latency import LatencyModel
from batching.policy import BatchDecision, Outlook, Pending, next_batch

__all__ = [
    "ArrivalTracker",
    "BatchDecision",
    "BatchObserver",
    "BatchResultMismatch",
    "BatcherClosed",
    "BatchingConfig",
    "BatchingError",
    "Clock",
    "DeadlineExceeded",
    "LatencyModel",
    "MicroBatcher",
    "MonotonicClock",
    "Outlook",
    "Overloaded",
    "Pending",
    "RequestTooLarge",
    "next_batch",
]
