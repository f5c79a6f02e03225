"""Batching knobs. Plain data, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    """Most cost units (images) one call of the batch function receives."""

    max_queue_delay: float = 0.0
    """Seconds a partial batch may be held, once the runner is free, for more items to
    arrive. 0 (the default) sends whatever is queued the moment the runner is free: requests
    batch up only while the model is busy, and a lone request on an idle server goes at once."""

    max_queue_size: int = 256
    """Most cost units waiting in the queue; beyond it ``submit`` raises ``Overloaded``."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_queue_delay < 0:
            raise ValueError("max_queue_delay must not be negative")
        if self.max_queue_size < self.max_batch_size:
            raise ValueError("max_queue_size must hold at least one full batch")
