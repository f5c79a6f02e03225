"""Decoding, validation and preprocessing of uploaded images."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from model_contract.errors import ErrorKind, ServiceError
from model_contract.imaging import DecodeLimits, decode, decoded_bytes, image_to_tensor
from model_contract.preprocess import PreprocessSpec

SPEC = PreprocessSpec(resize_shorter_side=256, crop_size=224)
FAST = SPEC.model_copy(update={"decode": "fast"})
MAX_PIXELS = 40_000_000
LIMITS = DecodeLimits(max_pixels=MAX_PIXELS, max_decoded_bytes=128 * 1024 * 1024)


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
        image_to_tensor(data, SPEC, LIMITS)
    return caught.value.kind


def test_output_is_the_models_uint8_input() -> None:
    tensor = image_to_tensor(encode(photo(), "PNG"), SPEC, LIMITS)
    assert tensor.shape == (224, 224, 3) and tensor.dtype == np.uint8


def test_only_the_centre_survives_the_crop() -> None:
    # 512x256: after resizing the shorter side to 256 nothing changes, and the 224 crop
    # keeps columns 144..368 — all blue; the red and green outer bands are cut away.
    rgb = np.zeros((256, 512, 3), np.uint8)
    rgb[:, :144] = (255, 0, 0)
    rgb[:, 144:368] = (0, 0, 255)
    rgb[:, 368:] = (0, 255, 0)
    tensor = image_to_tensor(encode(Image.fromarray(rgb), "PNG"), SPEC, LIMITS)
    inner = tensor[:, 4:-4]  # bicubic support reaches 2 px over the edge
    assert inner[..., 2].min() >= 250 and inner[..., :2].max() <= 5


@pytest.mark.parametrize("spec", [SPEC, FAST], ids=["exact", "fast"])
def test_matches_resize_then_crop_done_the_long_way(spec: PreprocessSpec) -> None:
    image = photo()
    w, h = image.size
    scale = 256 / min(w, h)
    resized = image.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    reference = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.int16)
    tensor = image_to_tensor(encode(image, "PNG"), spec, LIMITS).astype(np.int16)
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
    original = image_to_tensor(encode(photo(), "PNG"), SPEC, LIMITS).astype(np.int16)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    other = image_to_tensor(encode(convert(photo()), fmt), SPEC, LIMITS).astype(np.int16)  # type: ignore[operator]
    tolerance = 40 if mode == "L" else 12  # grey loses colour; palettes and JPEG quantize
    assert np.abs(other - original).mean() < tolerance


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (300, 300), (10, 20, 30, 0))
    tensor = image_to_tensor(encode(rgba, "PNG"), SPEC, LIMITS)
    assert tensor.min() == 255


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    ramp = (np.linspace(0, 65535, 300 * 300).reshape(300, 300)).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    tensor = image_to_tensor(data, SPEC, LIMITS)
    assert tensor.min() < 40 and tensor.max() > 215  # the whole range, not a white sheet


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to show
    data = encode(photo(), "JPEG", exif=exif, quality=95)
    upright = decode(data, LIMITS, SPEC)
    assert upright.size == (300, 400)
    reference = np.asarray(photo().transpose(Image.Transpose.ROTATE_270), dtype=np.int16)
    assert np.abs(np.asarray(upright, dtype=np.int16) - reference).mean() < 6


def test_in_fast_mode_large_jpegs_decode_at_reduced_scale_but_keep_enough_pixels() -> None:
    big = encode(photo().resize((2400, 1800)), "JPEG", quality=90)
    image = decode(big, LIMITS, FAST)
    assert min(image.size) >= 256 and image.size[0] < 2400
    assert decode(big, LIMITS, SPEC).size == (2400, 1800)  # exact mode decodes at full scale


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


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A PNG that declares its size and then holds garbage: decoding it could only fail."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"not zlib") + png_chunk(b"IEND", b"")


def test_an_image_within_the_pixel_limit_but_over_the_byte_limit_is_refused_before_decoding() -> None:
    # 6000x6000 16-bit RGBA: 36 megapixels (under 40) but 144 MB decoded (over 128 MiB). Its
    # pixel data is garbage, so a 413 rather than a 400 shows that nothing was decoded.
    with pytest.raises(ServiceError) as caught:
        image_to_tensor(png_header_only(6000, 6000, bit_depth=16, colour_type=6), SPEC, LIMITS)
    assert caught.value.kind is ErrorKind.IMAGE_TOO_LARGE and "bytes decoded" in caught.value.message
    # The same size in 8-bit grey fits, so it gets as far as decoding the garbage.
    assert error_kind(png_header_only(6000, 6000, bit_depth=8, colour_type=0)) is ErrorKind.INVALID_IMAGE


@pytest.mark.parametrize(("mode", "bytes_per_pixel"), [("L", 1), ("RGB", 3), ("RGBA", 4), ("I;16", 2), ("F", 4)])
def test_decoded_bytes_count_bands_and_sample_size(mode: str, bytes_per_pixel: int) -> None:
    assert decoded_bytes(Image.new(mode, (30, 20))) == 30 * 20 * bytes_per_pixel


def test_the_byte_limit_counts_bands() -> None:
    limits = DecodeLimits(max_pixels=MAX_PIXELS, max_decoded_bytes=300 * 300 * 3)
    image = Image.new("RGB", (300, 300), (10, 20, 30))
    assert image_to_tensor(encode(image, "PNG"), SPEC, limits).shape == (224, 224, 3)
    with pytest.raises(ServiceError) as caught:
        image_to_tensor(encode(image.convert("RGBA"), "PNG"), SPEC, limits)
    assert caught.value.kind is ErrorKind.IMAGE_TOO_LARGE


def test_a_jpeg_is_measured_at_the_scale_it_will_decode_at() -> None:
    big = encode(photo().resize((4000, 3000)), "JPEG", quality=80)  # 36 MB as RGB; 1/8 scale: 0.6 MB
    limits = DecodeLimits(max_pixels=MAX_PIXELS, max_decoded_bytes=1_000_000)
    assert image_to_tensor(big, FAST, limits).shape == (224, 224, 3)
    with pytest.raises(ServiceError) as caught:  # exact mode decodes it at full scale
        image_to_tensor(big, SPEC, limits)
    assert caught.value.kind is ErrorKind.IMAGE_TOO_LARGE


# Large enough that the alpha and 16-bit paths shrink them before converting (factor 2 or more).
LARGE = (2400, 1700)


def test_large_translucent_images_are_composited_over_white() -> None:
    red_half_transparent = Image.new("RGBA", LARGE, (200, 0, 0, 128))
    tensor = image_to_tensor(encode(red_half_transparent, "PNG"), SPEC, LIMITS).astype(np.int16)
    expected = np.array([200 * 128 / 255 + 255 * 127 / 255, 255 * 127 / 255, 255 * 127 / 255])
    assert np.abs(tensor - expected).max() <= 2


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_large_palette_images_with_a_transparent_colour_turn_it_white(fmt: str) -> None:
    palette = Image.new("P", LARGE, 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (0, 0, LARGE[0], LARGE[1] // 2))  # top half blue, bottom half transparent black
    tensor = image_to_tensor(encode(palette, fmt, transparency=0), SPEC, LIMITS)
    assert (tensor[:100] == (0, 0, 255)).all() and (tensor[-100:] == 255).all()


def test_large_sixteen_bit_images_are_scaled_not_clipped() -> None:
    grey = Image.fromarray(np.full(LARGE[::-1], 128 * 257, np.uint16))
    assert image_to_tensor(encode(grey, "PNG"), SPEC, LIMITS).max() == 128
    ramp = np.tile(np.linspace(0, 65535, LARGE[1]).astype(np.uint16)[:, None], (1, LARGE[0]))  # dark to light
    tensor = image_to_tensor(encode(Image.fromarray(ramp), "TIFF", compression="tiff_lzw"), SPEC, LIMITS)
    assert tensor.min() < 40 and tensor.max() > 215 and (np.diff(tensor[..., 0].astype(int), axis=0) >= 0).all()


def test_large_shrunk_images_keep_their_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to show
    rgba = photo().resize((2400, 1800)).convert("RGBA")
    upright = decode(encode(rgba, "PNG", exif=exif), LIMITS, SPEC)
    reference = photo().transpose(Image.Transpose.ROTATE_270).resize((900, 1200)).crop((0, 150, 900, 1050))
    assert upright.size == (900, 900)  # the central square, reduced by 2
    assert np.abs(np.asarray(upright, np.int16) - np.asarray(reference, np.int16)).mean() < 3


@pytest.mark.parametrize("size", [(300, 300), (2400, 1700)])
def test_float_images_with_nan_and_infinity_decode(size: tuple[int, int]) -> None:
    # Found by the fuzzer: a float TIFF holding a signalling NaN (random bits often are one)
    # raised "invalid value encountered in divide" and became a 500 wherever warnings are errors.
    bits = np.full(size[::-1], 0x7F800001, np.uint32)  # signalling NaN
    bits[:, : size[0] // 8] = 0x7FC00000  # quiet NaN
    bits[:, -size[0] // 3 :] = 0x7F800000  # +infinity
    tensor = image_to_tensor(encode(Image.fromarray(bits.view(np.float32)), "TIFF"), SPEC, LIMITS)
    assert tensor[:, :50].max() == 0 and tensor[:, -50:].min() == 255


@pytest.mark.parametrize("size", [(55, 80), (144, 98), (95, 95)])
def test_a_crop_as_large_as_the_resize_fits_every_image_size(size: tuple[int, int]) -> None:
    # Found by the fuzzer: with crop_size == resize_shorter_side the crop box came out a rounding
    # error past the image's edge for some shorter sides (55, 95, 98...) and Pillow's ValueError
    # became a 500.
    for spec in (
        PreprocessSpec(resize_shorter_side=224, crop_size=224),
        PreprocessSpec(resize_shorter_side=16, crop_size=16),
    ):
        tensor = image_to_tensor(encode(photo().resize(size), "PNG"), spec, LIMITS)
        assert tensor.shape == (spec.crop_size, spec.crop_size, 3)
