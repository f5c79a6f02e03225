"""Light augmentation: a few re-framed (and by default mirrored) copies of each training image.

Each copy is made from the image as the server decodes it (``model_contract.imaging.decode``):
a random box of 70 to 100 % of its area (aspect ratio within 3:4 to 4:3) is resampled, with
the serving filter, straight to the size the serving resize makes (shorter side
``resize_shorter_side``), optionally mirrored, encoded losslessly and then turned into the
model's input by ``image_to_tensor`` like any upload (which leaves its size alone and crops its
centre). Copies are seeded by the run's seed and the image's content, so a copy is the same on
every run and its features can be cached.
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
MAX_ASPECT = 4 / 3


@dataclass(frozen=True)
class Augmentation:
    copies: int = 2
    """Augmented copies per training image (0: none)."""
    flip: bool = True
    """Mirror half of the copies; off for classes a mirror changes (text, digits, left and right)."""
    seed: int = 0

    def tag(self) -> str:
        """What a copy's pixels depend on besides its image and index: part of its cache key."""
        return f"crop{MIN_AREA}-aspect{MAX_ASPECT:.4f}-flip{int(self.flip)}-seed{self.seed}"

    def rng(self, digest: str, copy: int) -> random.Random:
        return random.Random(f"{self.tag()}:{digest}:{copy}")


def random_box(size: tuple[int, int], rng: random.Random) -> tuple[float, float, float, float]:
    width, height = size
    area = width * height * rng.uniform(MIN_AREA, 1.0)
    aspect = math.exp(rng.uniform(-math.log(MAX_ASPECT), math.log(MAX_ASPECT)))
    w = min(float(width), math.sqrt(area * aspect))
    h = min(float(height), math.sqrt(area / aspect))
    left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return (left, top, left + w, top + h)


def augmented_copy(
    data: bytes, spec: PreprocessSpec, limits: DecodeLimits, augmentation: Augmentation, digest: str, copy: int
) -> bytes:
    """Copy number ``copy`` of an encoded image, as a PNG of the serving resize's size."""
    rng = augmentation.rng(digest, copy)
    image = decode(data, limits, spec)
    left, top, right, bottom = random_box(image.size, rng)
    scale = spec.resize_shorter_side / min(right - left, bottom - top)
    size = (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale)))
    out = image.resize(size, RESAMPLING[spec.interpolation], box=(left, top, right, bottom))
    if augmentation.flip and rng.random() < 0.5:
        out = ImageOps.mirror(out)
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
