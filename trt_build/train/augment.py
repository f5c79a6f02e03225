"""Light augmentation: a few re-framed (and by default mirrored) copies of each training image.

Each copy is made from the image as the server decodes it (``model_contract.imaging.decode``):
a random box of 70 to 100 % of its area, whatever the image's shape (``random_box``: the area
first, then how much the box's aspect ratio departs from the image's, within 3:4 to 4:3, as far
as that area allows), of which the part the serving crop will show, its central square, is
resampled with the serving filter straight to the serving resize's size
(``resize_shorter_side`` square), optionally mirrored, encoded losslessly and then turned into
the model's input by ``image_to_tensor`` like any upload (which leaves its size alone and crops
its centre). Copies are seeded by the run's seed and the image's content, so a copy is the same
on every run and its features can be cached.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

from PIL import ImageOps

from model_contract.imaging import DecodeLimits, decode
from model_contract.preprocess import RESAMPLING, PreprocessSpec

MIN_AREA = 0.7
"""Least share of the image's area a copy's box covers (the most is all of it)."""
MAX_ASPECT = 4 / 3
"""Most a box's aspect ratio departs from the image's, either way."""


@dataclass(frozen=True)
class Augmentation:
    copies: int = 2
    """Augmented copies per training image (0: none)."""
    flip: bool = True
    """Mirror half of the copies; off for classes a mirror changes (text, digits, left and right)."""
    seed: int = 0

    def tag(self) -> str:
        """What a copy's pixels depend on besides its image and index: part of its cache key."""
        return f"area{MIN_AREA}-stretch{MAX_ASPECT:.4f}-square-flip{int(self.flip)}-seed{self.seed}"

    def rng(self, digest: str, copy: int) -> random.Random:
        return random.Random(f"{self.tag()}:{digest}:{copy}")


Box = tuple[float, float, float, float]


def random_box(size: tuple[int, int], rng: random.Random) -> Box:
    """A box inside a ``size`` image covering a uniformly random ``MIN_AREA`` to 1 of its area,
    its aspect ratio the image's stretched by up to ``MAX_ASPECT`` either way (log-uniformly) as
    far as the image allows at that area: a box of share ``a`` of the area, stretched by ``s``,
    is ``sqrt(a * s)`` of the width by ``sqrt(a / s)`` of the height, so ``a <= s <= 1 / a``.
    Always possible, for any shape: no retries, and the same draws give the same box."""
    width, height = size
    area = rng.uniform(MIN_AREA, 1.0)
    low, high = max(area, 1 / MAX_ASPECT), min(1 / area, MAX_ASPECT)
    stretch = math.exp(rng.uniform(math.log(low), math.log(high)))
    w = min(float(width), width * math.sqrt(area * stretch))
    h = min(float(height), height * math.sqrt(area / stretch))
    left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return (left, top, min(float(width), left + w), min(float(height), top + h))


def central_square(box: Box) -> Box:
    """The largest square centred in ``box``: all of it that a centre crop of the box resized to
    its shorter side can show."""
    left, top, right, bottom = box
    side = min(right - left, bottom - top)
    x, y = (left + right - side) / 2, (top + bottom - side) / 2
    return (max(left, x), max(top, y), min(right, x + side), min(bottom, y + side))


def augmented_copy(
    data: bytes, spec: PreprocessSpec, limits: DecodeLimits, augmentation: Augmentation, digest: str, copy: int
) -> bytes:
    """Copy number ``copy`` of an encoded image, as a ``resize_shorter_side`` square PNG: the
    central square of a ``random_box``, so a long strip's copy costs no more than a square's."""
    rng = augmentation.rng(digest, copy)
    image = decode(data, limits, spec)
    square = central_square(random_box(image.size, rng))
    side = spec.resize_shorter_side
    out = image.resize((side, side), RESAMPLING[spec.interpolation], box=square)
    if augmentation.flip and rng.random() < 0.5:
        out = ImageOps.mirror(out)
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
