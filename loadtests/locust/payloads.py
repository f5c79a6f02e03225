"""Payloads for the scenarios: real photographs at the spread of sizes clients upload."""

from __future__ import annotations

import random
from functools import cache

import numpy as np

from loadtests.payloads import jpeg_payloads
from loadtests.payloads import preprocessed_photos as _preprocessed

# Shorter side of the upload, with how often clients send it: thumbnails, phone-camera
# web uploads, and full-resolution originals.
SIZE_MIX: tuple[tuple[int, float], ...] = ((160, 0.2), (480, 0.6), (1200, 0.2))


@cache
def photos(shorter_side: int) -> tuple[bytes, ...]:
    return tuple(jpeg_payloads(shorter_side=shorter_side))


def typical_photo(rng: random.Random) -> bytes:
    return rng.choice(photos(480))


def mixed_photo(rng: random.Random) -> bytes:
    sizes, weights = zip(*SIZE_MIX, strict=True)
    return rng.choice(photos(rng.choices(sizes, weights)[0]))


@cache
def preprocessed_photos() -> np.ndarray:
    return _preprocessed()
