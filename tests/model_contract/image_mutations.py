"""A seed corpus of real photos in every accepted format and mode, and the mutations the decode
fuzzer applies to them. Everything is a pure function of its inputs and a ``random.Random``, so
a mutant is replayed from its seed string alone (see ``replay``)."""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import ExifTags, Image

from tests.conftest import GRACE_HOPPER, PHOTOS, photo_path

SEED_SHORTER_SIDE = 96  # small, so that each decode takes a millisecond or two
INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 50_000, 0x7FFFFFFF, 0xFFFFFFFF)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _small_photo(source: tuple[str, str]) -> Image.Image:
    image = Image.open(photo_path(source)).convert("RGB")
    scale = SEED_SHORTER_SIDE / min(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)


def _encodings(rgb: Image.Image) -> dict[str, bytes]:
    grey = rgb.convert("L")
    rgba = rgb.copy()
    rgba.putalpha(grey.point(lambda v: 255 - v // 2))  # translucent where bright
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    sixteen = Image.fromarray(np.asarray(grey, np.uint16) * 257)
    floats = Image.fromarray(np.asarray(grey, np.float32) * 1.5)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    return {
        "jpeg-baseline": encode(rgb, "JPEG", quality=85),
        "jpeg-progressive-exif": encode(rgb, "JPEG", quality=85, progressive=True, exif=exif),
        "jpeg-grey": encode(grey, "JPEG"),
        "jpeg-cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "png-rgb": encode(rgb, "PNG"),
        "png-rgba-exif": encode(rgba, "PNG", exif=exif),
        "png-palette-transparent": encode(palette, "PNG", transparency=0),
        "png-grey": encode(grey, "PNG"),
        "png-grey-alpha": encode(rgba.convert("LA"), "PNG"),
        "png-16bit": encode(sixteen, "PNG"),
        "webp-lossy": encode(rgb, "WEBP", quality=80),
        "webp-lossless-alpha": encode(rgba, "WEBP", lossless=True),
        "bmp": encode(rgb, "BMP"),
        "bmp-palette": encode(palette, "BMP"),
        "gif": encode(palette, "GIF"),
        "gif-transparent": encode(palette, "GIF", transparency=0),
        "tiff": encode(rgb, "TIFF"),
        "tiff-lzw": encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-jpeg": encode(rgb, "TIFF", compression="jpeg"),
        "tiff-deflate-rgba": encode(rgba, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-16bit": encode(sixteen, "TIFF"),
        "tiff-16bit-packbits": encode(sixteen, "TIFF", compression="packbits"),
        "tiff-float": encode(floats, "TIFF"),
    }


@functools.cache
def corpus() -> dict[str, dict[str, bytes]]:
    """{encoding: {photo: bytes}} for every photo the test suite ships."""
    sources = {name: spec["file"] for name, spec in PHOTOS.items()} | {"grace_hopper": GRACE_HOPPER}
    by_photo = {name: _encodings(_small_photo(source)) for name, source in sources.items()}  # type: ignore[arg-type]
    kinds = next(iter(by_photo.values()))
    return {kind: {photo: encodings[kind] for photo, encodings in by_photo.items()} for kind in kinds}


def all_seeds() -> list[bytes]:
    return [data for photos in corpus().values() for data in photos.values()]


# --- format structure: where the fields worth corrupting are -------------------------------


def png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, total length) of each well-formed chunk, signature excluded."""
    chunks, offset = [], len(PNG_SIGNATURE)
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        if offset + 12 + length > len(data):
            break
        chunks.append((offset, 12 + length))
        offset += 12 + length
    return chunks


def jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(offset, total length) of each marker segment before the scan data."""
    segments, offset = [], 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        (length,) = struct.unpack_from(">H", data, offset + 2)
        segments.append((offset, 2 + length))
        if data[offset + 1] == 0xDA:  # start of scan: entropy-coded data follows
            break
        offset += 2 + length
    return segments


def tiff_value_fields(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of the value field of each entry in the first IFD."""
    if data[:4] not in (b"II*\x00", b"MM\x00*") or len(data) < 8:
        return []
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        return []
    (count,) = struct.unpack_from(order + "H", data, ifd)
    fields = []
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(data) - 11), 12):
        field_type = struct.unpack_from(order + "H", data, entry + 2)[0]
        fields.append((entry + 8, order + ("H" if field_type == 3 else "I")))
    return fields


def dimension_fields(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of the declared width and height, by format."""
    if data.startswith(PNG_SIGNATURE):
        return [(16, ">I"), (20, ">I")]
    if data.startswith(b"\xff\xd8"):
        sof = [o for o, _ in jpeg_segments(data) if 0xC0 <= data[o + 1] <= 0xCF and data[o + 1] not in (0xC4, 0xCC)]
        return [(o + 5, ">H") for o in sof] + [(o + 7, ">H") for o in sof]
    if data.startswith(b"GIF"):
        descriptors = [o for o in range(13, len(data) - 10) if data[o] == 0x2C][:1]
        return [(6, "<H"), (8, "<H")] + [(o + 5, "<H") for o in descriptors] + [(o + 7, "<H") for o in descriptors]
    if data.startswith(b"BM"):
        return [(18, "<i"), (22, "<i"), (28, "<H")]  # width, height, bits per pixel
    if data.startswith(b"RIFF"):
        return [(24, "<H"), (26, "<H"), (28, "<H")]  # VP8X canvas / VP8 frame / VP8L packed size
    return tiff_value_fields(data)


# --- mutations: each takes the data and a Random, returns the mutant and what it did -----------


Mutation = Callable[[bytes, random.Random], tuple[bytes, str]]


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randrange(len(data))
    return data[:at], f"truncate at {at}"


def flip_bits(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    bits = [rng.randrange(len(data) * 8) for _ in range(rng.randint(1, 8))]
    for bit in bits:
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out), f"flip bits {bits}"


def overwrite_run(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at, length = rng.randrange(len(data)), rng.randint(1, 64)
    fill = rng.choice([b"\x00", b"\xff", bytes([rng.randrange(256)])]) * length
    if rng.random() < 0.5:
        fill = rng.randbytes(length)
    return data[:at] + fill + data[at + length :], f"overwrite {length} bytes at {at}"


def corrupt_header_field(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A declared width, height (or, in a TIFF, any tag's value) set to an extreme."""
    fields = dimension_fields(data)
    if not fields:
        return overwrite_run(data, rng)
    offset, fmt = rng.choice(fields)
    size = struct.calcsize(fmt)
    if offset + size > len(data):
        return truncate(data, rng)
    value = rng.choice(INTERESTING) & ((1 << (8 * size)) - 1)
    raw = value.to_bytes(size, "big" if fmt[0] == ">" else "little")
    out = data[:offset] + raw + data[offset + size :]
    if data.startswith(PNG_SIGNATURE) and rng.random() < 0.8:
        out = _fix_png_crc(out, 8)  # so the corruption gets past the CRC check to the decoder
    return out, f"set field at {offset} ({fmt}) to {value:#x}"


def corrupt_chunk_length(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A PNG chunk's or JPEG segment's declared length set to an extreme or off by a little."""
    chunks = png_chunks(data) if data.startswith(PNG_SIGNATURE) else jpeg_segments(data)
    if not chunks:
        return overwrite_run(data, rng)
    offset = rng.choice(chunks)[0]
    size, at = (4, offset) if data.startswith(PNG_SIGNATURE) else (2, offset + 2)
    declared = int.from_bytes(data[at : at + size], "big")
    value = rng.choice([*INTERESTING, declared + 1, max(declared - 1, 0), declared * 2])
    value &= (1 << (8 * size)) - 1
    return data[:at] + value.to_bytes(size, "big") + data[at + size :], f"length at {at} to {value}"


def duplicate_chunk(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A PNG chunk or JPEG segment repeated in place; elsewhere, any slice."""
    chunks = png_chunks(data) if data.startswith(PNG_SIGNATURE) else jpeg_segments(data)
    if chunks:
        offset, total = rng.choice(chunks)
    else:
        offset = rng.randrange(len(data))
        total = rng.randint(1, max(1, len(data) - offset))
    piece = data[offset : offset + total]
    return data[: offset + total] + piece + data[offset + total :], f"duplicate {total} bytes at {offset}"


def splice(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """The start of this file and the end of another seed (of any format)."""
    others = all_seeds()
    index = rng.randrange(len(others))
    other = others[index]
    at, start = rng.randrange(len(data)), rng.randrange(len(other))
    return data[:at] + other[start:], f"splice [:{at}] with seed {index}[{start}:]"


def _fix_png_crc(data: bytes, offset: int) -> bytes:
    """Recompute the CRC of the chunk at ``offset``."""
    (length,) = struct.unpack_from(">I", data, offset)
    end = offset + 8 + length
    if end + 4 > len(data):
        return data
    crc = zlib.crc32(data[offset + 4 : end])
    return data[:end] + struct.pack(">I", crc) + data[end + 4 :]


MUTATIONS: tuple[Mutation, ...] = (
    truncate,
    flip_bits,
    overwrite_run,
    corrupt_header_field,
    corrupt_chunk_length,
    duplicate_chunk,
    splice,
)


def mutate(data: bytes, seed: str) -> tuple[bytes, list[str]]:
    """One to three stacked mutations, all drawn from ``random.Random(seed)``."""
    rng = random.Random(seed)
    done = []
    for _ in range(rng.randint(1, 3)):
        if not data:
            break
        mutation = rng.choice(MUTATIONS)
        data, what = mutation(data, rng)
        done.append(f"{mutation.__name__}: {what}")
    return data, done


def replay(kind: str, photo: str, seed: str) -> bytes:
    """The mutant a fuzz failure names, to debug it: ``replay("png-rgb", "coffee", "0:png-rgb:coffee:7")``."""
    return mutate(corpus()[kind][photo], seed)[0]
