"""Batching knobs. Plain data, validated once at construction."""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    """Most cost units (images) one call of the batch function receives."""

    max_queue_delay: float = 0.0
    """Seconds a partial batch may be held, once the runner is free, for more items to
    arrive. 0 (the default) sends whatever is queued the moment the runner is free: requests
    batch up only while the model is busy, and a lone request on an idle server goes at once."""

    max_adaptive_delay: float = 0.002
    """Most seconds a partial batch may be held, once the runner is free, for items that
    are on their way: callers just answered coming back, seen as a surge of arrivals each
    time the runner frees. Held only while more items are expected, for at most the fitted
    fixed cost times its share of the batch's predicted time (nothing when per-item cost
    dominates), and never past a deadline or when nothing ran in the last moment: a lone
    request on an idle server goes at once. 0 turns it off. Independent of
    ``max_queue_delay``: a batch leaves when neither holds it."""

    max_queue_size: int = 256
    """Most cost units waiting in the queue; beyond it ``submit`` raises ``Overloaded``."""

    max_concurrent_batches: int = 1
    """Batch calls in flight at once. 1 suits one runtime instance; 2 lets the next batch be
    assembled (stacked, padded) while the current one runs."""

    allowed_batch_sizes: tuple[int, ...] = ()
    """Sizes the runner is compiled for (e.g. 1, 2, 4, 8, 16, 32); a batch is padded up to
    the next one. Empty: any size from 1 to ``max_batch_size``."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_queue_delay < 0:
            raise ValueError("max_queue_delay must not be negative")
        if self.max_adaptive_delay < 0:
            raise ValueError("max_adaptive_delay must not be negative")
        if self.max_queue_size < self.max_batch_size:
            raise ValueError("max_queue_size must hold at least one full batch")
        if self.max_concurrent_batches < 1:
            raise ValueError("max_concurrent_batches must be at least 1")
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes must be positive and strictly increasing")
            if sizes[-1] != self.max_batch_size:
                raise ValueError("the largest allowed batch size must equal max_batch_size")

    @property
    def batch_shapes(self) -> tuple[int, ...]:
        """Every batch size the runner will be called with."""
        return self.allowed_batch_sizes or tuple(range(1, self.max_batch_size + 1))

    def padded_size(self, size: int) -> int:
        """The batch size the runner sees for ``size`` real items."""
        if not self.allowed_batch_sizes or size > self.max_batch_size:
            return size
        return self.allowed_batch_sizes[bisect.bisect_left(self.allowed_batch_sizes, size)]
