"""Decoding, validation and preprocessing of uploaded images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from server.errors import ErrorKind, ServiceError
from server.imaging import PreprocessSpec, decode, image_to_tensor

SPEC = PreprocessSpec(resize_shorter_side=256, crop_size=224)
MAX_PIXELS = 40_000_000


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def photo() -> Image.Image:
    """A smooth, non-symmetric test picture (a gradient with a bright square near a corner)."""
    y, x = np.mgrid[0:300, 0:400]
    rgb = np.stack([x * 255 // 399, y * 255 // 299, (x + y) * 255 // 698], axis=-1).astype(np.uint8)
    rgb[20:80, 20:80] = 255
    return Image.fromarray(rgb, "RGB")


def error_kind(data: bytes) -> ErrorKind:
    with pytest.raises(ServiceError) as caught:
        image_to_tensor(data, SPEC, MAX_PIXELS)
    return caught.value.kind


def test_output_is_the_models_uint8_input() -> None:
    tensor = image_to_tensor(encode(photo(), "PNG"), SPEC, MAX_PIXELS)
    assert tensor.shape == (224, 224, 3) and tensor.dtype == np.uint8


def test_only_the_centre_survives_the_crop() -> None:
    # 512x256: after resizing the shorter side to 256 nothing changes, and the 224 crop
    # keeps columns 144..368 — all blue; the red and green outer bands are cut away.
    rgb = np.zeros((256, 512, 3), np.uint8)
    rgb[:, :144] = (255, 0, 0)
    rgb[:, 144:368] = (0, 0, 255)
    rgb[:, 368:] = (0, 255, 0)
    tensor = image_to_tensor(encode(Image.fromarray(rgb), "PNG"), SPEC, MAX_PIXELS)
    inner = tensor[:, 4:-4]  # bicubic support reaches 2 px over the edge
    assert inner[..., 2].min() >= 250 and inner[..., :2].max() <= 5


def test_matches_resize_then_crop_done_the_long_way() -> None:
    image = photo()
    w, h = image.size
    scale = 256 / min(w, h)
    resized = image.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    reference = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.int16)
    tensor = image_to_tensor(encode(image, "PNG"), SPEC, MAX_PIXELS).astype(np.int16)
    assert np.abs(tensor - reference).mean() < 2.0


@pytest.mark.parametrize(
    ("mode", "convert"),
    [
        ("L", lambda im: im.convert("L")),
        ("RGBA", lambda im: im.convert("RGBA")),
        ("P", lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)),
        ("CMYK", lambda im: im.convert("CMYK")),
    ],
)
def test_other_modes_decode_to_the_same_picture(mode: str, convert: object) -> None:
    original = image_to_tensor(encode(photo(), "PNG"), SPEC, MAX_PIXELS).astype(np.int16)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    other = image_to_tensor(encode(convert(photo()), fmt), SPEC, MAX_PIXELS).astype(np.int16)  # type: ignore[operator]
    tolerance = 40 if mode == "L" else 12  # grey loses colour; palettes and JPEG quantize
    assert np.abs(other - original).mean() < tolerance


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (300, 300), (10, 20, 30, 0))
    tensor = image_to_tensor(encode(rgba, "PNG"), SPEC, MAX_PIXELS)
    assert tensor.min() == 255


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    ramp = (np.linspace(0, 65535, 300 * 300).reshape(300, 300)).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    tensor = image_to_tensor(data, SPEC, MAX_PIXELS)
    assert tensor.min() < 40 and tensor.max() > 215  # the whole range, not a white sheet


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to show
    data = encode(photo(), "JPEG", exif=exif, quality=95)
    upright = decode(data, MAX_PIXELS, 256)
    assert upright.size == (300, 400)
    reference = np.asarray(photo().transpose(Image.Transpose.ROTATE_270), dtype=np.int16)
    assert np.abs(np.asarray(upright, dtype=np.int16) - reference).mean() < 6


def test_large_jpegs_decode_at_reduced_scale_but_keep_enough_pixels() -> None:
    big = photo().resize((2400, 1800))
    image = decode(encode(big, "JPEG", quality=90), MAX_PIXELS, min_shorter_side=256)
    assert min(image.size) >= 256 and image.size[0] < 2400


def test_empty_data_is_rejected() -> None:
    assert error_kind(b"") is ErrorKind.EMPTY_BODY


def test_bytes_that_are_no_image_are_rejected() -> None:
    assert error_kind(b"this is a text file, not a photo" * 10) is ErrorKind.INVALID_IMAGE


def test_a_truncated_jpeg_is_rejected() -> None:
    data = encode(photo(), "JPEG")
    assert error_kind(data[: len(data) // 2]) is ErrorKind.INVALID_IMAGE


def test_an_image_format_outside_the_supported_list_is_rejected() -> None:
    assert error_kind(encode(photo(), "PPM")) is ErrorKind.UNSUPPORTED_IMAGE_FORMAT


def test_a_decompression_bomb_is_rejected_before_decoding() -> None:
    bomb = encode(Image.new("1", (10_000, 10_000)), "PNG")  # 100 megapixels in a few kB
    assert len(bomb) < 100_000
    assert error_kind(bomb) is ErrorKind.IMAGE_TOO_LARGE
