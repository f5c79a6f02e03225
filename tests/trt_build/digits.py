"""The digits data set for the tests: ``trt_build.train.digits`` (the benchmark's own helpers),
skipping a test when scikit-learn, whose wheel ships the digits, is not installed."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from trt_build.train import digits
from trt_build.train.digits import png, write_class_folders

__all__ = ["digit_images", "png", "write_class_folders"]


def digit_images(classes: Sequence[int], start: int, count: int) -> list[tuple[int, int, bytes]]:
    """(index in the data set, digit, PNG) of the images ``start`` to ``start + count`` of each class."""
    pytest.importorskip("sklearn.datasets", reason="scikit-learn ships the digits data set")
    return digits.digit_images(classes, start, count)
