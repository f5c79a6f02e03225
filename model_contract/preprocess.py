"""The preprocessing a model declares in its manifest, and the resize-and-crop both the server
and the builds apply: one implementation, so a build is verified on exactly the tensors it
will be served.

The reference is ``reference_pipeline`` (from bytes) and ``reference_resize_crop`` (from a
decoded image): the image decoded at full scale, its shorter side resized to
``resize_shorter_side`` with the spec's filter over the whole image and its centre cropped to
``crop_size``, rounded as torchvision's ``Resize`` then ``CenterCrop`` round. The spec's
``decode`` says how the server gets there:

- ``"exact"`` (the default): full-scale decode, then one resampling of just the reference's crop
  box (``exact_resize_crop``), same filter at the same positions: within 1 of the reference on
  every uint8 value, and equal on almost all of them; served probabilities within 0.001 of the
  reference's on the test photos (``loadtests/fidelity.py``).
- ``"fast"``: what the server did before modes existed. A JPEG decodes at a reduced DCT scale
  (1/2 to 1/8, ``Image.draft``) when its shorter side keeps ``resize_shorter_side`` pixels, and
  the crop box, centred without torchvision's rounding, is resampled after Pillow's integer
  reduction (``reducing_gap``) (``center_crop_resize``). On JPEGs with 2000 to 4000 pixels on the
  shorter side it decodes 5 to 8 times faster; served probabilities move by up to about 0.05, and
  a near tie can change its top-1.

Alpha and high-bit-depth images are reduced before they are converted, in both modes (memory:
see ``model_contract.imaging``).
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, model_validator

RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
DecodeMode = Literal["exact", "fast"]


class PreprocessSpec(BaseModel):
    """The manifest's ``preprocessing`` section: how an image becomes the model's input."""

    model_config = ConfigDict(frozen=True)

    resize_shorter_side: int = Field(gt=0)
    crop_size: int = Field(gt=0)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: float = 0.0
    std: float = 1.0
    normalization: Literal["in_graph", "host"] = "in_graph"
    decode: DecodeMode = Field(
        default="exact",
        description='"exact": the reference pipeline\'s tensors (full-scale decode); "fast": large JPEGs decode '
        "at reduced scale and resize after an integer reduction, several times faster, probabilities a few "
        "hundredths off.",
    )

    @model_validator(mode="after")
    def _crop_fits(self) -> PreprocessSpec:
        if self.crop_size > self.resize_shorter_side:
            raise ValueError("crop_size must not exceed resize_shorter_side")
        return self


def reference_geometry(size: tuple[int, int], spec: PreprocessSpec) -> tuple[tuple[int, int], tuple[int, int]]:
    """The reference's resized (width, height) and its crop's (left, top) in the resized image,
    rounded as torchvision rounds them: ``long = int(side * long / short)``, offsets
    ``int(round((resized - crop) / 2))`` (Python's round: halves go to the even integer)."""
    width, height = size
    side = spec.resize_shorter_side
    resized = (side, int(side * height / width)) if width <= height else (int(side * width / height), side)
    left, top = (round((length - spec.crop_size) / 2.0) for length in resized)
    return resized, (left, top)


def reference_resize_crop(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The reference, from a decoded upright RGB image: resize the whole image (shorter side to
    ``resize_shorter_side``, the spec's filter, no reduction first), then crop its centre."""
    resized_size, (left, top) = reference_geometry(image.size, spec)
    resized = image if resized_size == image.size else image.resize(resized_size, RESAMPLING[spec.interpolation])
    crop = resized.crop((left, top, left + spec.crop_size, top + spec.crop_size))
    return np.asarray(crop, dtype=np.uint8)


def _reference_rgb(image: Image.Image) -> Image.Image:
    """Full-size RGB: alpha over white, 16- and 32-bit samples scaled onto 8 bits when they pass 255."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        divisor = 257.0 if image.mode.startswith("I;16") or values.max() > 255 else 1.0
        return Image.fromarray(np.clip(np.rint(values / divisor), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def reference_pipeline(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """The reference preprocessing, from the image's bytes to the model's (crop, crop, 3) uint8
    input: decode at full scale, turn upright (EXIF), convert to RGB at full size, then
    ``reference_resize_crop``. No limits and no memory care: for tests and measurements (what
    ``"exact"`` serving is checked against), never for a client's bytes."""
    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image)
        return reference_resize_crop(_reference_rgb(upright), spec)


def reference_crop_box(size: tuple[int, int], spec: PreprocessSpec) -> tuple[float, float, float, float]:
    """The region of a ``size`` image that the reference's crop shows, in that image's pixels."""
    width, height = size
    (resized_width, resized_height), (left, top) = reference_geometry(size, spec)
    x_scale, y_scale = width / resized_width, height / resized_height
    crop = spec.crop_size
    return (left * x_scale, top * y_scale, (left + crop) * x_scale, (top + crop) * y_scale)


def exact_resize_crop(
    image: Image.Image,
    spec: PreprocessSpec,
    source_size: tuple[int, int] | None = None,
    origin: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
) -> np.ndarray:
    """``reference_resize_crop`` as one resampling of just the reference's crop box: the same
    filter at the same positions (Pillow's kernel reaches past the box into the image), so within
    1 of the reference on uint8 and mostly equal, without resizing what the crop cuts away.

    ``image`` may be a window of a larger source of ``source_size`` (the geometry is the whole
    source's): its pixel (x, y) starts at source pixel ``origin + (x, y) * scale``."""
    left, top, right, bottom = reference_crop_box(source_size or image.size, spec)
    box = (
        (left - origin[0]) / scale,
        (top - origin[1]) / scale,
        (right - origin[0]) / scale,
        (bottom - origin[1]) / scale,
    )
    return np.asarray(resample_box(image, box, spec), dtype=np.uint8)


Box = tuple[float, float, float, float]


def clamped(box: Box, size: tuple[int, int]) -> Box:
    """``box`` kept inside an image of ``size``: float rounding can put an edge of a full-width
    crop a hair outside it, which Pillow refuses."""
    left, top, right, bottom = box
    return (max(0.0, left), max(0.0, top), min(float(size[0]), right), min(float(size[1]), bottom))


def resample_box(image: Image.Image, box: Box, spec: PreprocessSpec) -> Image.Image:
    """The ``box`` region of ``image`` resampled to the crop, with the spec's filter and no
    integer reduction first (Pillow: a horizontal pass, then a vertical one)."""
    size = (spec.crop_size, spec.crop_size)
    return image.resize(size, RESAMPLING[spec.interpolation], box=clamped(box, image.size))


def resample_box_vertical_first(image: Image.Image, box: Box, spec: PreprocessSpec) -> Image.Image:
    """``resample_box`` with its two passes the other way round: for an image stored on its side,
    whose vertical is the upright image's horizontal. Pillow rounds to 8 bits between passes, so
    the order decides where a filter's overshoot at a sharp edge is clipped."""
    left, top, right, bottom = clamped(box, image.size)
    filter_ = RESAMPLING[spec.interpolation]
    rows = image.resize((image.width, spec.crop_size), filter_, box=(0.0, top, float(image.width), bottom))
    return rows.resize((spec.crop_size, spec.crop_size), filter_, box=(left, 0.0, right, float(spec.crop_size)))


def center_crop_resize(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The ``"fast"`` resize-and-crop: the central square of ``crop_size`` after resizing the
    shorter side to ``resize_shorter_side``, as one resampling of the source region the crop
    covers, after Pillow's integer reduction (``reducing_gap=3``) of a large image."""
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
