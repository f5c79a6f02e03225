"""What the in-process measurements (``ceiling``, ``model_bench``, ``fidelity``) share: one
timer, and decode limits that refuse none of the photos they, or the tests, decode."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from model_contract.imaging import DecodeLimits

# Far above any photo measured here (the largest is an upscaled 4000-pixel JPEG), yet still a
# bound: a file that would exhaust memory is refused rather than decoded.
GENEROUS_LIMITS = DecodeLimits(max_pixels=50_000_000, max_decoded_bytes=1 << 30)


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``run`` (warm it first if it needs it)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return float(np.median(times))
