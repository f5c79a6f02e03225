"""A bounded LRU of model outputs, keyed by a hash of the input bytes.

One cache per loaded model version. It lives and dies with that version, so it can never
serve another version's result. A hit skips decoding and the model: a client that resends
the same photo costs a hash and a dictionary lookup.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np


class ResultCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a cache needs room for at least one entry")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def key(data: bytes | np.ndarray) -> bytes:
        raw = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
        return hashlib.blake2b(raw, digest_size=20).digest()

    def __len__(self) -> int:
        return len(self._entries)

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
