"""Real photographs, and generated variations of them, as model inputs for calibration and
verification. Never random noise: quantization calibrated or checked on noise says nothing
about photos.

The default set is the photographs that ship inside scikit-image and matplotlib, plus random
crops, flips, small rotations and colour jitter of them (seeded, so a set is reproducible).
``--eval-dir`` or ``--calibration-dir`` replaces it with a folder of your own images.

The images are encoded as a client sends them: each photo as its own file's bytes, each
variation as a JPEG (quality 90). They become tensors through the server's own decode
(``model_contract.imaging.image_to_tensor`` with the model's preprocessing, its ``decode`` mode
included), so a build is verified on the tensors it will be served.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from model_contract.imaging import DecodeLimits, image_to_tensor
from model_contract.preprocess import PreprocessSpec

SKIMAGE_PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png", "astronaut.png")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
VARIATION_JPEG_QUALITY = 90
# The operator's own images: limits only against a file that would exhaust memory.
EVAL_LIMITS = DecodeLimits(max_pixels=100_000_000, max_decoded_bytes=1 << 30)


def packaged_photo_paths() -> list[Path]:
    try:
        import matplotlib
        import skimage
    except ImportError as exc:
        raise RuntimeError("the default image set needs scikit-image and matplotlib; or pass an image folder") from exc
    paths = [Path(skimage.__file__).parent / "data" / n for n in SKIMAGE_PHOTOS]
    return paths + [Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / n for n in MATPLOTLIB_PHOTOS]


def folder_photo_paths(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images in {folder}")
    return paths


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


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=VARIATION_JPEG_QUALITY)
    return buffer.getvalue()


def image_stream(photos: list[bytes], count: int, seed: int) -> Iterator[bytes]:
    """The photos themselves first, then variations of them in turn, encoded as JPEG."""
    rng = random.Random(seed)
    upright: dict[int, Image.Image] = {}
    for i in range(count):
        index = i % len(photos)
        if i < len(photos):
            yield photos[index]
            continue
        if index not in upright:
            upright[index] = ImageOps.exif_transpose(Image.open(io.BytesIO(photos[index]))).convert("RGB")
        yield _jpeg(vary(upright[index], rng))


def evaluation_images(count: int, seed: int = 0, folder: Path | None = None) -> list[bytes]:
    """``count`` encoded images: the photos' own bytes, then JPEG variations of them."""
    paths = folder_photo_paths(folder) if folder else packaged_photo_paths()
    return list(image_stream([p.read_bytes() for p in paths], count, seed))


def evaluation_tensors(
    preprocessing: PreprocessSpec, count: int, seed: int = 0, folder: Path | None = None
) -> np.ndarray:
    """``count`` model inputs (N, crop, crop, 3) uint8: ``evaluation_images`` through the
    server's decode with this preprocessing (and its decode mode)."""
    images = evaluation_images(count, seed, folder)
    return np.stack([image_to_tensor(data, preprocessing, EVAL_LIMITS) for data in images])
