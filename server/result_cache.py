"""A bounded LRU of model outputs, in front of decode: keyed by model, version and a hash of
the encoded image, so a client that resends the same photo costs a hash and a lookup.

One cache per loaded model version, which lives and dies with that version; the key names
the version as well, so an entry can never answer for another one.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from functools import partial

import numpy as np
from prometheus_client import Counter

from server.serving import Compute, Offload

# Smaller images are hashed on the event loop: a thread hop costs more than hashing 64 KB.
HASH_ON_LOOP_BYTES = 64 * 1024


class ResultCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a cache needs room for at least one entry")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def key(model: str, version: int, encoded: bytes) -> bytes:
        digest = hashlib.blake2b(digest_size=20)
        # Length-prefixed, so no name and version can run into each other.
        name = model.encode()
        digest.update(len(name).to_bytes(4, "little") + name + version.to_bytes(8, "little"))
        digest.update(encoded)
        return digest.digest()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def limits(self) -> tuple[int, int]:
        """(max_entries, max_bytes): enough to make another cache like it."""
        return self._max_entries, self._max_bytes

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: bytes) -> np.ndarray | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: np.ndarray) -> None:
        if value.nbytes > self._max_bytes or key in self._entries:
            return
        value = value.copy()
        value.flags.writeable = False  # shared by every hit: nobody may change it
        self._entries[key] = value
        self._bytes += value.nbytes
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes


class CachedResults:
    """One model version's cache, used in one call per image, and counted (hits, misses)."""

    def __init__(self, model: str, version: int, cache: ResultCache, hits: Counter, misses: Counter) -> None:
        self._model = model
        self._version = version
        self._cache = cache
        self._hits = hits
        self._misses = misses

    @property
    def limits(self) -> tuple[int, int]:
        return self._cache.limits

    async def remembered(self, encoded: bytes, compute: Compute, offload: Offload) -> np.ndarray:
        key_of = partial(ResultCache.key, self._model, self._version, encoded)
        # A 20 MB upload takes ~20 ms to hash: off the event loop, on the caller's work pool.
        key = await offload(key_of) if len(encoded) > HASH_ON_LOOP_BYTES else key_of()
        stored = self._cache.get(key)
        if stored is not None:
            self._hits.inc()
            return stored
        self._misses.inc()
        output = await compute()
        self._cache.put(key, output)
        return output
