"""A real labelled image data set from a registry package: scikit-learn's handwritten digits
(``sklearn.datasets.load_digits``: 1,797 8x8 greyscale scans from the UCI "Optical Recognition of
Handwritten Digits" set, in the wheel as ``digits.csv.gz``; nothing is downloaded), written as
class folders for ``imgserve train``. The digits benchmark and the tests both use it.

Each digit is written as an 8x8 PNG, dark ink on white; the serving preprocessing upscales it
like any small upload. Which images go where is fixed by their order in the data set, so the
images held out of a training folder are never in it.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image


class DigitsUnavailable(ImportError):
    """scikit-learn, whose wheel ships the digits, is not installed."""


@functools.cache
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The (1797, 8, 8) images (values 0..16, 16 = ink) and their digits."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise DigitsUnavailable("the digits data set needs scikit-learn (pip install scikit-learn)") from exc
    bunch = sklearn_digits()
    return bunch.images, bunch.target


def png(image: np.ndarray) -> bytes:
    """One digit (values 0..16, 16 = ink) as an 8-bit greyscale PNG, ink dark."""
    pixels = np.rint(255 - image * (255 / 16)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def digit_images(classes: Iterable[int], start: int, count: int | None = None) -> list[tuple[int, int, bytes]]:
    """(index in the data set, digit, PNG) of the images ``start`` to ``start + count`` of each
    class (to the class's last with no ``count``), class by class, each in data-set order."""
    images, target = load_digits()
    out = []
    for digit in classes:
        members = np.flatnonzero(target == digit)
        for index in members[start : None if count is None else start + count]:
            out.append((int(index), digit, png(images[index])))
    return out


def write_class_folders(folder: Path, images: Sequence[tuple[int, int, bytes]]) -> Path:
    """The Keras layout: ``folder/<digit>/<index>.png``."""
    for index, digit, data in images:
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        (folder / str(digit) / f"{index:04d}.png").write_bytes(data)
    return folder
