"""The model-input transform both the server and the builds use: one implementation, so a
build is verified on exactly the tensors it will be served."""

from __future__ import annotations

import numpy as np
from PIL import Image

RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def center_crop_resize(image: Image.Image, resize_shorter_side: int, crop_size: int, interpolation: str) -> np.ndarray:
    """Resize the shorter side to ``resize_shorter_side`` and take the central square of
    ``crop_size``, as one resampling of just the source region the crop covers."""
    width, height = image.size
    scale = resize_shorter_side / min(width, height)
    crop_in_source = crop_size / scale
    # When the crop spans the whole shorter side, rounding can put the box a hair outside the
    # image (224 / (224 / 55) > 55), which Pillow refuses: keep it inside.
    left = max(0.0, (width - crop_in_source) / 2)
    top = max(0.0, (height - crop_in_source) / 2)
    box = (left, top, min(float(width), left + crop_in_source), min(float(height), top + crop_in_source))
    out = image.resize((crop_size, crop_size), RESAMPLING[interpolation], box=box, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8)
