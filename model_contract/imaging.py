"""Bytes -> validated RGB image -> the model's uint8 input tensor.

Runs in the decode thread pool (Pillow releases the GIL while decoding and resizing), so it
must stay free of shared mutable state.

Decode modes (the manifest's ``preprocessing.decode``, see ``model_contract.preprocess``):
``"exact"`` decodes at full scale and resamples the reference's crop box, giving the reference
pipeline's tensor (within 1 on uint8); ``"fast"`` decodes large JPEGs at a reduced DCT scale
(``Image.draft``) and lets Pillow reduce by an integer factor before resampling.

Memory: what an image will cost once decoded is checked from its header, before any pixel is
decoded (``DecodeLimits``): at full scale in exact mode, at the draft's scale in fast mode (so a
JPEG that fast mode accepts may be refused in exact mode). Images that need more than an 8-bit
conversion (alpha, 16- and 32-bit samples) are first cut to the central square the model sees
and reduced by an integer factor, a band at a time, so their conversions run on a small image:
the decoded image is then the only full-size buffer. In exact mode an RGB or greyscale image is
not turned (EXIF) or converted at full size either: the crop is resampled from the image as
stored, then turned and converted at 224x224 (other 8-bit modes, CMYK or palette, are converted
to RGB first, bilevel to L). This holds in both modes; in exact mode the
reduced square is resampled with the reference's geometry of the whole image, so such an image
(with a central square of 3x ``resize_shorter_side`` or more; smaller ones are not reduced)
comes within rounding of the reference, as a reduction before resampling allows, not within 1.

Errors: whatever Pillow raises while parsing and decoding the client's bytes is the client's
fault (4xx). The steps after that work on decoded pixels of a known mode, so an exception
there is our bug and stays a 500.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageMode, UnidentifiedImageError

from model_contract.errors import ErrorKind, ServiceError, echo
from model_contract.memory import RELEASE_AFTER_BYTES, release_freed_memory
from model_contract.preprocess import (
    PreprocessSpec,
    center_crop_resize,
    exact_resize_crop,
    reference_crop_box,
    resample_box,
    resample_box_vertical_first,
)

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
# Modes that convert to RGB exactly as they always have: the served model's accuracy rests on it.
_EIGHT_BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SUPPORTED_MODES = _EIGHT_BIT_MODES | _ALPHA_MODES | _HIGH_BIT_DEPTH_MODES
# Source pixels converted at a time while shrinking: a few MB, whatever the image's size.
_BAND_PIXELS = 1 << 20
# center_crop_resize's reducing_gap: shrinking by the factor it would reduce by itself keeps the
# result within rounding of resizing the whole image (and leaves 3x the resize target or more).
_REDUCING_GAP = 3
# As ImageOps.exif_transpose; applied here to the (possibly shrunk) image rather than the source.
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What each turn does to the axes: (upright x comes from the stored y, upright x runs backwards,
# upright y runs backwards).
_TURN_AXES = {
    Image.Transpose.FLIP_LEFT_RIGHT: (False, True, False),
    Image.Transpose.ROTATE_180: (False, True, True),
    Image.Transpose.FLIP_TOP_BOTTOM: (False, False, True),
    Image.Transpose.TRANSPOSE: (True, False, False),
    Image.Transpose.ROTATE_270: (True, True, False),
    Image.Transpose.TRANSVERSE: (True, True, True),
    Image.Transpose.ROTATE_90: (True, False, True),
}


@dataclass(frozen=True)
class DecodeLimits:
    """What one image may cost: its pixels (width x height), and its bytes once decoded."""

    max_pixels: int
    max_decoded_bytes: int


@contextmanager
def _client_data() -> Iterator[None]:
    """Pillow parsing or decoding the client's bytes: anything it raises is the image's fault."""
    try:
        yield
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ServiceError(ErrorKind.IMAGE_TOO_LARGE, f"image too large: {exc}") from exc
    except MemoryError as exc:
        # An allocation that the image's own data asked for and the header checks could not
        # see (a TIFF strip, an embedded profile) failed: the image is too large for this
        # server. The failed allocation was never made, so serving goes on.
        raise ServiceError(ErrorKind.IMAGE_TOO_LARGE, "the image needs more memory to decode than allowed") from exc
    except UnidentifiedImageError as exc:
        raise ServiceError(ErrorKind.INVALID_IMAGE, "the data is not an image Pillow can identify") from exc
    except Exception as exc:
        # On corrupt input Pillow's parsers raise OSError, SyntaxError, ValueError, EOFError,
        # struct.error, IndexError, KeyError, TypeError, ZeroDivisionError... a set that changes
        # from release to release (Pillow is fuzzed under OSS-Fuzz), so no list would stay complete.
        reason = f"{type(exc).__name__}: {echo(str(exc))}"
        raise ServiceError(ErrorKind.INVALID_IMAGE, f"the image could not be decoded ({reason})") from exc


def decoded_bytes(image: Image.Image) -> int:
    """Pixels x bands x bytes per sample of the image's mode: what decoding it produces."""
    mode = ImageMode.getmode(image.mode)
    return image.width * image.height * len(mode.bands) * np.dtype(mode.typestr).itemsize


def _check_format(image: Image.Image) -> None:
    if image.format not in SUPPORTED_FORMATS:
        raise ServiceError(
            ErrorKind.UNSUPPORTED_IMAGE_FORMAT,
            f"image format {image.format} is not supported; use one of {', '.join(sorted(SUPPORTED_FORMATS))}",
        )
    if image.mode not in _SUPPORTED_MODES:
        raise ServiceError(ErrorKind.UNSUPPORTED_IMAGE_FORMAT, f"image mode {echo(image.mode)} is not supported")


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ServiceError(ErrorKind.INVALID_IMAGE, "the image has no pixels")
    if width * height > max_pixels:
        raise ServiceError(
            ErrorKind.IMAGE_TOO_LARGE, f"image is {width}x{height}; at most {max_pixels} pixels are accepted"
        )


def _check_decoded_bytes(image: Image.Image, max_bytes: int) -> None:
    size = decoded_bytes(image)
    if size > max_bytes:
        raise ServiceError(
            ErrorKind.IMAGE_TOO_LARGE,
            f"image is {image.width}x{image.height} in mode {image.mode}: {size} bytes decoded, "
            f"at most {max_bytes} are accepted",
        )


def _draft(image: Image.Image, min_shorter_side: int) -> None:
    """JPEGs decode at a reduced DCT scale when that still leaves the shorter side at
    ``min_shorter_side`` or more: a 12-megapixel photo decodes 8x faster."""
    if image.format == "JPEG":
        width, height = image.size
        scale = min_shorter_side / min(width, height)
        if scale < 1:
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))


def open_image(data: bytes, limits: DecodeLimits, draft_to: int | None) -> Image.Image:
    """Identify the image from its header and check what decoding it will cost, before any
    pixel is decoded (after a JPEG's draft to ``draft_to`` pixels on the shorter side, if given,
    which decides what will be)."""
    if not data:
        raise ServiceError(ErrorKind.EMPTY_BODY, "the image is empty")
    with _client_data():
        image = Image.open(io.BytesIO(data))
        _check_format(image)
        _check_pixels(image, limits.max_pixels)
        if draft_to is not None:
            _draft(image, draft_to)
        _check_decoded_bytes(image, limits.max_decoded_bytes)
    return image


def _orientation(image: Image.Image) -> Image.Transpose | None:
    """The turn the image's EXIF asks for, if any."""
    orientation = image.getexif().get(ExifTags.Base.Orientation)
    return _EXIF_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None


def _needs_shrinking(image: Image.Image) -> bool:
    """Alpha and high bit depths: their conversions would copy the full image several times."""
    has_palette_alpha = image.mode == "P" and "transparency" in image.info
    return image.mode in _ALPHA_MODES or image.mode in _HIGH_BIT_DEPTH_MODES or has_palette_alpha


def _to_working_mode(band: Image.Image) -> Image.Image:
    """A mode ``Image.reduce`` averages correctly: 32-bit for 16-bit samples, RGBA for alpha."""
    if band.mode.startswith("I;16"):
        return band.convert("I")
    if band.mode in ("I", "F"):
        return band
    if band.mode == "La":  # Pillow converts La to RGBA only by way of LA
        band = band.convert("LA")
    return band.convert("RGBA")


def _central_box(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The central square, all the model's crop can see; one pixel wider (or taller) when that
    keeps its centre on the image's own, so the crop lands where it would on the whole image."""
    width, height = size
    side = min(width, height)
    keep_width, keep_height = side + (width - side) % 2, side + (height - side) % 2
    left, top = (width - keep_width) // 2, (height - keep_height) // 2
    return left, top, left + keep_width, top + keep_height


def _shrink_plan(size: tuple[int, int], min_shorter_side: int) -> tuple[tuple[int, int, int, int], int]:
    """What ``shrink`` keeps of an image of this size, and the factor it reduces that by."""
    left, top, right, bottom = _central_box(size)
    return (left, top, right, bottom), max(1, min(right - left, bottom - top) // (_REDUCING_GAP * min_shorter_side))


def shrink(image: Image.Image, min_shorter_side: int) -> Image.Image:
    """The central square, reduced by the integer factor the final resize would reduce it by,
    converted and reduced a band at a time so that no full-size copy is made. Alpha images come
    back RGBA; 16-bit ones 32-bit ("I")."""
    (left, top, right, bottom), factor = _shrink_plan(image.size, min_shorter_side)
    rows = factor * max(1, _BAND_PIXELS // ((right - left) * factor))  # whole reduction blocks per band
    out: Image.Image | None = None
    for y in range(top, bottom, rows):
        band = _to_working_mode(image.crop((left, y, right, min(y + rows, bottom))))
        reduced = band.reduce(factor) if factor > 1 else band
        if out is None:
            out = Image.new(reduced.mode, (math.ceil((right - left) / factor), math.ceil((bottom - top) / factor)))
        out.paste(reduced, (0, (y - top) // factor))
    assert out is not None  # the image has pixels, so the loop ran
    return out


def to_uint8_pixels(values: np.ndarray, divisor: float = 1.0) -> np.ndarray:
    """Pixel values in any numeric type, divided, rounded and clipped to 0..255 (NaN becomes 0)."""
    # Client floats can be anything, signalling NaNs included: no floating-point warnings here.
    with np.errstate(invalid="ignore", over="ignore"):
        if np.issubdtype(values.dtype, np.floating):
            values = np.nan_to_num(values, nan=0.0)  # and infinities to the largest floats
        if divisor != 1.0:
            values = values / divisor
        pixels: np.ndarray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return pixels


def _high_bit_depth_divisor(image: Image.Image) -> float:
    """16-bit samples (or 32-bit ones past 255) are scaled onto 8 bits, not clipped; decided on
    the whole decoded image, before shrinking averages its extremes away."""
    if image.mode.startswith("I;16"):
        return 257.0
    high = image.getextrema()[1]
    return 257.0 if isinstance(high, (int, float)) and high > 255 else 1.0


def _over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_to_rgb(pixels: np.ndarray, divisor: float) -> Image.Image:
    return Image.fromarray(to_uint8_pixels(pixels, divisor)).convert("RGB")


def to_rgb(image: Image.Image, min_shorter_side: int) -> Image.Image:
    """Any supported mode to 8-bit RGB: alpha over white, 16-bit scaled, CMYK/palette converted.
    Alpha and high-bit-depth images come back shrunk (``shrink``)."""
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        divisor = _high_bit_depth_divisor(image)
        return _grey_to_rgb(np.asarray(shrink(image, min_shorter_side), dtype=np.float32), divisor)
    if _needs_shrinking(image):
        return _over_white(shrink(image, min_shorter_side))
    return image.convert("RGB")


@dataclass(frozen=True)
class _Decoded:
    """An upright RGB image: the whole source, or the window of it that ``shrink`` kept."""

    image: Image.Image
    source_size: tuple[int, int]
    """The upright source's size as decoded (after a draft): what the crop's geometry is of."""
    origin: tuple[float, float] = (0.0, 0.0)
    """Where the image's top-left corner lies in the upright source."""
    scale: int = 1
    """Source pixels per image pixel, along each axis."""
    turn: Image.Transpose | None = None
    """The turn that makes ``image`` upright, when it is still as stored (exact mode, 8-bit)."""


def decode(data: bytes, limits: DecodeLimits, spec: PreprocessSpec) -> Image.Image:
    """Decode to upright RGB as the spec's decode mode does: 8-bit images whole (in fast mode,
    a large JPEG at the reduced scale that keeps ``resize_shorter_side`` pixels), alpha and
    high-bit-depth ones as their reduced central square (``shrink``)."""
    return _upright_rgb(_open(data, limits, spec), spec.resize_shorter_side).image


def _open(data: bytes, limits: DecodeLimits, spec: PreprocessSpec) -> Image.Image:
    return open_image(data, limits, spec.resize_shorter_side if spec.decode == "fast" else None)


def _decoded(data: bytes, limits: DecodeLimits, spec: PreprocessSpec) -> tuple[_Decoded, int]:
    """What the crop is taken from, and the bytes the source took once decoded. In exact mode an
    RGB or greyscale image stays as stored, neither turned nor converted: the crop is resampled
    from it and only the crop is turned (a full-size copy of a 40-megapixel photo would double
    its memory)."""
    image = _open(data, limits, spec)
    size = decoded_bytes(image)
    if spec.decode == "exact" and not _needs_shrinking(image):
        return _as_stored(image), size
    return _upright_rgb(image, spec.resize_shorter_side), size


def _as_stored(image: Image.Image) -> _Decoded:
    with _client_data():
        image.load()
        turn = _orientation(image)
    if image.mode not in ("RGB", "L"):  # resampled as they are, converted once small
        with _client_data():  # a MemoryError converting the client's image is its 413
            image = image.convert("L" if image.mode == "1" else "RGB")
    return _Decoded(image, _upright_size(image.size, turn), turn=turn)


def _stored_box(
    box: tuple[float, float, float, float], upright_size: tuple[int, int], turn: Image.Transpose
) -> tuple[float, float, float, float]:
    """A box in the upright image, in the stored image's coordinates (before ``turn``)."""
    swap, backwards_x, backwards_y = _TURN_AXES[turn]
    left, top, right, bottom = box
    width, height = upright_size
    if backwards_x:
        left, right = width - right, width - left
    if backwards_y:
        top, bottom = height - bottom, height - top
    return (top, left, bottom, right) if swap else (left, top, right, bottom)


def _exact_tensor(decoded: _Decoded, spec: PreprocessSpec) -> np.ndarray:
    """The reference's crop, resampled from the image as decoded; then turned upright, and made
    RGB, at 224x224."""
    if decoded.turn is None:
        crop = exact_resize_crop(decoded.image, spec, decoded.source_size, decoded.origin, decoded.scale)
        return crop if decoded.image.mode == "RGB" else np.asarray(Image.fromarray(crop).convert("RGB"))
    box = _stored_box(reference_crop_box(decoded.source_size, spec), decoded.source_size, decoded.turn)
    on_its_side = _TURN_AXES[decoded.turn][0]
    resample = resample_box_vertical_first if on_its_side else resample_box
    upright = resample(decoded.image, box, spec).transpose(decoded.turn)
    return np.asarray(upright.convert("RGB"), dtype=np.uint8)


def _upright_size(size: tuple[int, int], turn: Image.Transpose | None) -> tuple[int, int]:
    return size[::-1] if turn is not None and _TURN_AXES[turn][0] else size


def _shrunk_window(
    size: tuple[int, int], min_shorter_side: int, turn: Image.Transpose | None
) -> tuple[tuple[float, float], int]:
    """Where ``shrink``'s image lies in the upright source once both are turned, and its factor.
    Its pixels are whole blocks counted from the kept box's top-left corner, the last ones
    partial; a turn that runs an axis backwards puts the partial block first, and the origin
    moves with it."""
    (left, top, right, bottom), factor = _shrink_plan(size, min_shorter_side)
    x = (left, math.ceil((right - left) / factor) * factor, size[0])  # start, extent, source length
    y = (top, math.ceil((bottom - top) / factor) * factor, size[1])
    swap, backwards_x, backwards_y = _TURN_AXES[turn] if turn is not None else (False, False, False)
    if swap:
        x, y = y, x
    origin = (float(x[2] - x[0] - x[1] if backwards_x else x[0]), float(y[2] - y[0] - y[1] if backwards_y else y[0]))
    return origin, factor


def _upright_rgb(image: Image.Image, min_shorter_side: int) -> _Decoded:
    with _client_data():
        image.load()
        turn = _orientation(image)
    source_size = _upright_size(image.size, turn)
    if _needs_shrinking(image):
        origin, factor = _shrunk_window(image.size, min_shorter_side, turn)
        image = to_rgb(image, min_shorter_side)  # small from here on, so turn it afterwards
        return _Decoded(image.transpose(turn) if turn is not None else image, source_size, origin, factor)
    if turn is not None:
        image = image.transpose(turn)
    return _Decoded(to_rgb(image, min_shorter_side), source_size)


def image_to_tensor(data: bytes, spec: PreprocessSpec, limits: DecodeLimits) -> np.ndarray:
    """The whole host-side pipeline for one image: (crop, crop, 3) uint8, decoded and resized as
    ``spec.decode`` says."""
    decoded, source_bytes = _decoded(data, limits, spec)
    tensor = _exact_tensor(decoded, spec) if spec.decode == "exact" else center_crop_resize(decoded.image, spec)
    del decoded
    if source_bytes >= RELEASE_AFTER_BYTES:
        release_freed_memory()  # the large buffers just freed would otherwise stay in glibc's heaps
    return tensor
