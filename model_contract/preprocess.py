"""The preprocessing a model declares in its manifest, and the resize-and-crop both the server
and the builds apply: one implementation, so a build is verified on exactly the tensors it
will be served."""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class PreprocessSpec(BaseModel):
    """The manifest's ``preprocessing`` section: how an image becomes the model's input."""

    model_config = ConfigDict(frozen=True)

    resize_shorter_side: int = Field(gt=0)
    crop_size: int = Field(gt=0)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: float = 0.0
    std: float = 1.0
    normalization: Literal["in_graph", "host"] = "in_graph"

    @model_validator(mode="after")
    def _crop_fits(self) -> PreprocessSpec:
        if self.crop_size > self.resize_shorter_side:
            raise ValueError("crop_size must not exceed resize_shorter_side")
        return self


def center_crop_resize(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize the shorter side to ``resize_shorter_side`` and take the central square of
    ``crop_size``, as one resampling of just the source region the crop covers."""
    width, height = image.size
    scale = spec.resize_shorter_side / min(width, height)
    crop_in_source = spec.crop_size / scale
    # When the crop spans the whole shorter side, rounding can put the box a hair outside the
    # image (224 / (224 / 55) > 55), which Pillow refuses: keep it inside.
    left = max(0.0, (width - crop_in_source) / 2)
    top = max(0.0, (height - crop_in_source) / 2)
    box = (left, top, min(float(width), left + crop_in_source), min(float(height), top + crop_in_source))
    size = (spec.crop_size, spec.crop_size)
    out = image.resize(size, RESAMPLING[spec.interpolation], box=box, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8)
