"""The JPEG decoder benchmark's pure parts: the draft size fast mode asks for, the Pillow rows on
a small generated JPEG, the saved photo set, and the report table. simplejpeg is not needed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from loadtests import jpeg_decoders


def _jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_the_draft_request_keeps_256_pixels_on_the_shorter_side_and_none_when_already_small() -> None:
    assert jpeg_decoders.draft_request((3000, 2000)) == (384, 256)
    assert jpeg_decoders.draft_request((2000, 3001)) == (256, 385)
    assert jpeg_decoders.draft_request((400, 256)) is None
    assert jpeg_decoders.draft_request((200, 100)) is None


def test_the_pillow_rows_decode_a_small_jpeg_full_and_at_the_draft_factor() -> None:
    data = _jpeg(1100, 600)
    assert jpeg_decoders.pillow_full(data).size == (1100, 600)
    assert jpeg_decoders.pillow_draft(data).size == (550, 300)  # 600 // 256 = 2: half scale
    row = jpeg_decoders.pillow_row("noise", data, repeats=1)
    assert (row.photo, row.size, row.pillow_draft_size) == ("noise", "1100x600", "550x300")
    assert row.pillow_full_ms > 0 and row.pillow_draft_ms > 0
    assert row.simplejpeg_full_ms is None and row.exact_tensor_max_abs_diff is None


def test_a_png_is_re_encoded_as_jpeg_and_a_jpeg_is_kept_as_it_is() -> None:
    jpeg = _jpeg(40, 30)
    assert jpeg_decoders.as_jpeg(jpeg) is jpeg
    png = io.BytesIO()
    Image.new("L", (40, 30), 128).save(png, "PNG")
    with Image.open(io.BytesIO(jpeg_decoders.as_jpeg(png.getvalue()))) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (40, 30))


def test_saved_photos_load_back_in_order_under_their_names(tmp_path: Path) -> None:
    photos = {"zebra": b"1", "apple upscaled 10x10": b"2", "mango (png as q90)": b"3"}
    jpeg_decoders.save_photos(photos, tmp_path)
    assert jpeg_decoders.load_photos(tmp_path) == photos


def test_the_table_gives_speed_ups_and_leaves_missing_simplejpeg_figures_empty() -> None:
    measured = jpeg_decoders.Row(
        photo="big",
        size="4000x3000",
        kilobytes=1200,
        pillow_full_ms=60.0,
        pillow_draft_ms=14.0,
        pillow_draft_size="500x375",
        simplejpeg_full_ms=30.0,
        simplejpeg_min_size_ms=13.0,
        simplejpeg_min_size_size="500x375",
        simplejpeg_same_factor_ms=7.0,
        full_decode_max_abs_diff=0,
        full_decode_fraction_differing=0.0125,
        scaled_decode_max_abs_diff=0,
        exact_tensor_max_abs_diff=1,
        pillow_exact_tensor_max_abs_diff=1,
        pillow_exact_tensor_ms=70.0,
        simplejpeg_exact_tensor_ms=45.5,
    )
    pillow_only = jpeg_decoders.Row("small", "300x200", 30, 1.5, 1.25, "300x200")
    header, rule, big, small = jpeg_decoders.table([measured, pillow_only]).splitlines()
    assert header.count("|") == rule.count("|") == big.count("|") == small.count("|")
    assert big.split(" | ")[1:] == [
        "4000x3000",
        "1200",
        "60",
        "30",
        "2.00x",
        "14 (500x375)",
        "13 (500x375)",
        "7",
        "2.00x",
        "0",
        "1.25%",
        "0",
        "1 (1)",
        "70 / 45.5 |",
    ]
    assert small.split(" | ")[3:8] == ["1.5", "-", "-", "1.25 (300x200)", "- (-)"]
