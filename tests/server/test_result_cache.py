"""The bounded LRU result cache."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter

from server.result_cache import HASH_ON_LOOP_BYTES, CachedResults, ResultCache


def row(value: float, size: int = 10) -> np.ndarray:
    return np.full(size, value, np.float32)  # 40 bytes


def test_least_recently_used_entries_go_first_when_full() -> None:
    cache = ResultCache(max_entries=2, max_bytes=10_000)
    cache.put(b"a", row(1))
    cache.put(b"b", row(2))
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"c", row(3))
    assert cache.get(b"b") is None and cache.get(b"a") is not None and cache.get(b"c") is not None
    assert len(cache) == 2


def test_the_byte_bound_holds_too() -> None:
    cache = ResultCache(max_entries=100, max_bytes=100)  # room for two 40-byte rows
    for key in (b"a", b"b", b"c"):
        cache.put(key, row(1))
    assert len(cache) == 2 and cache.size_bytes == 80
    cache.put(b"huge", row(1, size=1000))  # larger than the whole cache: not stored
    assert cache.get(b"huge") is None


def test_stored_results_are_read_only_copies() -> None:
    cache = ResultCache(max_entries=4, max_bytes=1000)
    original = row(1)
    cache.put(b"a", original)
    original[0] = 99
    stored = cache.get(b"a")
    assert stored is not None and stored[0] == 1
    with pytest.raises(ValueError):
        stored[0] = 5


def test_keys_follow_the_model_the_version_and_the_bytes() -> None:
    key = ResultCache.key
    assert key("m", 1, b"photo") == key("m", 1, b"photo")
    assert key("m", 1, b"photo") != key("m", 1, b"photo2")
    assert key("m", 1, b"photo") != key("m", 2, b"photo")
    assert key("m", 1, b"photo") != key("n", 1, b"photo")
    assert key("m1", 1, b"photo") != key("m", 1, b"1photo")  # no name runs into the bytes


@pytest.mark.parametrize(
    ("size", "offloaded"), [(100, 0), (HASH_ON_LOOP_BYTES + 1, 3)], ids=["hashed-on-the-loop", "hashed-off-the-loop"]
)
def test_remembered_computes_once_per_image_and_hashes_large_ones_off_the_loop(size: int, offloaded: int) -> None:
    registry = CollectorRegistry()
    hits, misses = Counter("hits", "", registry=registry), Counter("misses", "", registry=registry)
    results = CachedResults("m", 1, ResultCache(max_entries=4, max_bytes=1000), hits, misses)
    computed: list[bytes] = []
    hashed_off_the_loop: list[bytes] = []

    async def offload(call: Callable[[], bytes]) -> bytes:
        key = await asyncio.to_thread(call)
        hashed_off_the_loop.append(key)
        return key

    async def scenario() -> list[np.ndarray]:
        async def compute(image: bytes) -> np.ndarray:
            computed.append(image)
            return row(len(computed))

        first, second = b"a" * size, b"b" * size
        images = (first, second, first)
        return [await results.remembered(image, partial(compute, image), offload) for image in images]

    answers = asyncio.run(scenario())
    assert len(computed) == 2 and answers[2][0] == answers[0][0] == 1 and answers[1][0] == 2
    assert (registry.get_sample_value("hits_total"), registry.get_sample_value("misses_total")) == (1, 2)
    assert len(hashed_off_the_loop) == offloaded
