"""Every byte string a client can send either decodes to the model's tensor or is refused with a
4xx: proven by mutation fuzzing of real photos in every accepted format, and by hypothesis.

The budget comes from ``IMGSERVE_FUZZ_MUTANTS`` (mutants per seed file, default 3: the file runs
in seconds; ``make fuzz`` raises it) and ``IMGSERVE_FUZZ_SEED`` (default "0"; change it to explore
new mutants). A failure names the encoding, photo, seed string and mutations; replay one with
``tests.model_contract.image_mutations.replay``.
"""

from __future__ import annotations

import os
import struct
import traceback
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_contract.errors import ServiceError
from model_contract.imaging import image_to_tensor
from model_contract.preprocess import PreprocessSpec
from server.api.error_handlers import HTTP_STATUS
from server.settings import LimitSettings
from tests.model_contract.image_mutations import PNG_SIGNATURE, corpus, mutate

# Pillow warns about odd files (and warns before it refuses a bomb); the server runs with those
# warnings on, as warnings, so the fuzzer must too. Warnings from our own code still fail.
pytestmark = pytest.mark.filterwarnings("ignore:::PIL")

MUTANTS = int(os.environ.get("IMGSERVE_FUZZ_MUTANTS", "3"))
BASE_SEED = os.environ.get("IMGSERVE_FUZZ_SEED", "0")
LIMITS = LimitSettings().decode_limits()
# The served model's preprocessing, and a small one under which the 96-pixel seeds are big
# enough to take the shrinking path (reduced by 2) like a large upload would; each in both
# decode modes.
SPECS = tuple(
    PreprocessSpec(resize_shorter_side=side, crop_size=crop, decode=mode)
    for mode in ("exact", "fast")
    for side, crop in ((256, 224), (16, 16))
)
HYPOTHESIS = settings(
    max_examples=max(30, 40 * MUTANTS),
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def broken_contract(data: bytes, spec: PreprocessSpec) -> str | None:
    """None when ``image_to_tensor`` gave a valid tensor or a 4xx; otherwise what it did instead."""
    try:
        tensor = image_to_tensor(data, spec, LIMITS)
    except ServiceError as exc:
        return None if 400 <= HTTP_STATUS[exc.kind] < 500 else f"HTTP {HTTP_STATUS[exc.kind]}: {exc.message}"
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return f"{type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"
    if tensor.shape != (spec.crop_size, spec.crop_size, 3) or tensor.dtype != np.uint8:
        return f"a {tensor.dtype} tensor of shape {tensor.shape}"
    return None


def assert_contract(data: bytes, spec: PreprocessSpec = SPECS[0]) -> None:
    failure = broken_contract(data, spec)
    assert failure is None, f"{failure}; input ({len(data)} bytes) starts {data[:32]!r}"


def test_the_seeds_themselves_decode() -> None:
    for kind, photos in corpus().items():
        for photo, data in photos.items():
            for spec in SPECS:
                assert image_to_tensor(data, spec, LIMITS).shape == (spec.crop_size, spec.crop_size, 3), (kind, photo)


@pytest.mark.parametrize("kind", list(corpus()))
def test_mutated_images_decode_or_are_refused_with_a_4xx(kind: str) -> None:
    failures = []
    for number, (photo, data) in enumerate(corpus()[kind].items()):
        for index in range(MUTANTS):
            seed = f"{BASE_SEED}:{kind}:{photo}:{index}"
            mutant, mutations = mutate(data, seed)
            spec = SPECS[(number + index) % len(SPECS)]
            failure = broken_contract(mutant, spec)
            if failure:
                failures.append(f"{kind} {photo} seed={seed!r} spec={spec} {mutations}: {failure}")
    assert not failures, f"{len(failures)} mutants broke the contract:\n" + "\n".join(failures[:10])


@HYPOTHESIS
@given(st.binary(max_size=4096))
def test_any_bytes_decode_or_are_refused_with_a_4xx(data: bytes) -> None:
    assert_contract(data)


MAGIC_NUMBERS = (
    PNG_SIGNATURE,
    PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR",
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff\xdb",
    b"\xff\xd8\xff\xc0",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    b"RIFF\x00\x10\x00\x00WEBPVP8L",
    b"RIFF\x00\x10\x00\x00WEBPVP8X",
    b"P6\n",  # formats Pillow knows but the server does not take: 415 or 400
    b"\x00\x00\x01\x00",
    b"8BPS",
)


@HYPOTHESIS
@given(st.sampled_from(MAGIC_NUMBERS), st.binary(max_size=4096))
def test_bytes_behind_a_real_magic_number_decode_or_are_refused(magic: bytes, rest: bytes) -> None:
    assert_contract(magic + rest)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@HYPOTHESIS
@given(
    width=st.integers(1, 2**31 - 1),
    height=st.integers(1, 2**31 - 1),
    depth=st.sampled_from([1, 2, 4, 8, 16]),
    colour=st.sampled_from([0, 2, 3, 4, 6]),
    interlace=st.integers(0, 1),
    pixels=st.binary(max_size=2048),
)
def test_well_formed_png_headers_over_any_pixels_decode_or_are_refused(
    width: int, height: int, depth: int, colour: int, interlace: int, pixels: bytes
) -> None:
    """Past the CRC checks, into the limits and the decoder: any declared size, depth and colour
    type over any (compressed) pixel data."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    palette = png_chunk(b"PLTE", bytes(range(48))) if colour == 3 else b""
    body = png_chunk(b"IDAT", zlib.compress(pixels)) + png_chunk(b"IEND", b"")
    assert_contract(PNG_SIGNATURE + png_chunk(b"IHDR", header) + palette + body, SPECS[width % len(SPECS)])


@HYPOTHESIS
@given(st.sampled_from(sorted(corpus())), st.sampled_from(sorted(corpus()["png-rgb"])), st.data())
def test_real_images_truncated_or_flipped_decode_or_are_refused(kind: str, photo: str, data: st.DataObject) -> None:
    original = corpus()[kind][photo]
    mutant = bytearray(original[: data.draw(st.integers(1, len(original)), label="truncate at")])
    for bit in data.draw(st.lists(st.integers(0, len(mutant) * 8 - 1), max_size=4), label="flip bits"):
        mutant[bit // 8] ^= 1 << (bit % 8)
    assert_contract(bytes(mutant), data.draw(st.sampled_from(SPECS), label="spec"))
