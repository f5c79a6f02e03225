"""Real photographs, and generated variations of them, as model inputs for calibration and
verification. Never random noise: quantization calibrated or checked on noise says nothing
about photos.

The default set is the photographs that ship inside scikit-image and matplotlib, plus random
crops, flips, small rotations and colour jitter of them (seeded, so a set is reproducible).
``--eval-dir`` or ``--calibration-dir`` replaces it with a folder of your own images.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from model_contract.preprocess import PreprocessSpec, center_crop_resize

SKIMAGE_PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png", "astronaut.png")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def packaged_photos() -> list[Image.Image]:
    try:
        import matplotlib
        import skimage
    except ImportError as exc:
        raise RuntimeError("the default image set needs scikit-image and matplotlib; or pass an image folder") from exc
    paths = [Path(skimage.__file__).parent / "data" / n for n in SKIMAGE_PHOTOS]
    paths += [Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / n for n in MATPLOTLIB_PHOTOS]
    return [Image.open(p).convert("RGB") for p in paths]


def folder_photos(folder: Path) -> list[Image.Image]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images in {folder}")
    return [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in paths]


def vary(image: Image.Image, rng: random.Random) -> Image.Image:
    """One plausible re-take of a photo: another framing, mirror, tilt, light and colour."""
    width, height = image.size
    area = rng.uniform(0.5, 1.0)
    w, h = int(width * area**0.5), int(height * area**0.5)
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    out = image.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    out = out.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BILINEAR, expand=False)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhancer(out).enhance(rng.uniform(0.7, 1.3))
    return out


def image_stream(photos: list[Image.Image], count: int, seed: int) -> Iterator[Image.Image]:
    """The photos themselves first, then variations of them in turn."""
    rng = random.Random(seed)
    for i in range(count):
        source = photos[i % len(photos)]
        yield source if i < len(photos) else vary(source, rng)


def evaluation_tensors(
    preprocessing: PreprocessSpec, count: int, seed: int = 0, folder: Path | None = None
) -> np.ndarray:
    """``count`` model inputs (N, crop, crop, 3) uint8, preprocessed as the server does."""
    photos = folder_photos(folder) if folder else packaged_photos()
    return np.stack([center_crop_resize(im, preprocessing) for im in image_stream(photos, count, seed)])
