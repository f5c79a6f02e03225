"""A real labelled image data set from a registry package: scikit-learn's handwritten digits
(``sklearn.datasets.load_digits``: 1,797 8x8 greyscale scans from the UCI "Optical Recognition of
Handwritten Digits" set, in the wheel as ``digits.csv.gz``; nothing is downloaded).

Each digit is written as an 8x8 PNG, dark ink on white; the serving preprocessing upscales it
like any small upload. Which images go where is fixed by their order in the data set, so the
images held out of a training folder are never in it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _digits() -> tuple[np.ndarray, np.ndarray]:
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn ships the digits data set")
    bunch = datasets.load_digits()
    return bunch.images, bunch.target


def png(image: np.ndarray) -> bytes:
    """One digit (values 0..16, 16 = ink) as an 8-bit greyscale PNG, ink dark."""
    pixels = np.rint(255 - image * (255 / 16)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def digit_images(classes: Sequence[int], start: int, count: int) -> list[tuple[int, int, bytes]]:
    """(index in the data set, digit, PNG) of the images ``start`` to ``start + count`` of each class."""
    images, target = _digits()
    out = []
    for digit in classes:
        for index in np.flatnonzero(target == digit)[start : start + count]:
            out.append((int(index), digit, png(images[index])))
    return out


def write_class_folders(folder: Path, images: Sequence[tuple[int, int, bytes]]) -> Path:
    """The Keras layout: ``folder/<digit>/<index>.png``."""
    for index, digit, data in images:
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        (folder / str(digit) / f"{index:04d}.png").write_bytes(data)
    return folder
