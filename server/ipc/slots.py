"""Fixed-size slots in shared memory: how decoded tensors cross to the model owner unpickled.

A front-end worker owns its rings (one per model version it sends to): it copies a tensor into
a free slot, names the slot in its message, and frees the slot when the owner has answered
for it (result, error, or a cancelled request's acknowledgement), never before. So a slot is
refilled only after the owner is done with it, with one harmless exception: the slot of an
image cancelled while its batch is being assembled, whose row nobody reads. The owner attaches
by name and reads the slots in place: the batch is assembled straight from shared memory.
"""

from __future__ import annotations

import _posixshmem  # what SharedMemory itself uses
import contextlib
import mmap
import os
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np


class SlotsExhausted(Exception):
    """Every slot is held by a request in flight."""


class SharedMemoryFull(Exception):
    """/dev/shm cannot hold another ring."""


class SlotRing:
    """The worker's side: creates the segment, hands out slots, removes it at ``close``."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any], count: int, name: str | None = None) -> None:
        """``name``: the segment's name (one the supervisor can find and remove if this process
        dies); raises ``SharedMemoryFull`` when /dev/shm cannot hold it."""
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.count = count
        self.slot_bytes = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        size = max(1, self.slot_bytes * count)
        self._memory = SharedMemory(name=name, create=True, size=size)
        try:
            # Reserve the pages now: a tmpfs that runs out later (Docker's /dev/shm is 64 MB by
            # default) would kill this process with SIGBUS on a write to a slot.
            os.posix_fallocate(self._memory._fd, 0, size)  # type: ignore[attr-defined]
        except OSError as exc:
            self._memory.close()
            self._memory.unlink()
            raise SharedMemoryFull(f"cannot reserve {size} bytes of shared memory: {exc}") from None
        self._slots = np.ndarray((count, *shape), dtype=self.dtype, buffer=self._memory.buf)
        self._free = list(range(count - 1, -1, -1))

    @property
    def name(self) -> str:
        return self._memory.name

    @property
    def free(self) -> int:
        return len(self._free)

    def put(self, tensors: list[np.ndarray]) -> list[int]:
        """Copy ``tensors`` into free slots, all or none; their slot numbers in order."""
        if len(tensors) > len(self._free):
            raise SlotsExhausted(f"{len(tensors)} slots wanted, {len(self._free)} free of {self.count}")
        taken = [self._free.pop() for _ in tensors]
        for slot, tensor in zip(taken, tensors, strict=True):
            self._slots[slot] = tensor
        return taken

    def release(self, slots: list[int]) -> None:
        self._free.extend(slots)

    def close(self) -> None:
        del self._slots
        self._memory.close()
        self._memory.unlink()


class AttachedRing:
    """The owner's side: read-only views of a worker's slots.

    Mapped without ``SharedMemory``, which would register the segment with this process's
    resource tracker: a tracker unlinks what is registered when it exits, and the worker that
    created the segment is the one to remove it.
    """

    def __init__(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any], count: int) -> None:
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.count = count
        fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDONLY, mode=0o600)
        try:
            size = os.fstat(fd).st_size
            needed = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize * count
            if size < needed:
                raise ValueError(f"ring {name} holds {size} bytes, {needed} announced")
            self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._slots = np.ndarray((count, *shape), dtype=self.dtype, buffer=self._map)

    def views(self, slots: list[int]) -> list[np.ndarray]:
        if any(not 0 <= s < self.count for s in slots):
            raise ValueError("slot out of range")
        return [self._slots[s] for s in slots]

    def close(self) -> None:
        del self._slots
        # A view may still be held by a batch being assembled: the mapping then goes with it.
        with contextlib.suppress(BufferError):
            self._map.close()


def remove_rings(prefix: str) -> None:
    """Unlink every segment whose name starts with ``prefix``: the rings of a worker that died
    without removing them. (Linux lists POSIX shared memory in /dev/shm.)"""
    folder = Path("/dev/shm")
    if not folder.is_dir():
        return
    for path in folder.glob(f"{prefix}*"):
        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink("/" + path.name)
        # Spawned processes share their parent's resource tracker, which would otherwise
        # warn about (and try to unlink) the segment again when it exits.
        with contextlib.suppress(Exception):
            resource_tracker.unregister("/" + path.name, "shared_memory")
