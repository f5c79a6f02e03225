"""Read a legacy (pre-1.6, non-zip) PyTorch ``state_dict`` file without torch.

The legacy format is a run of pickles followed by raw storage bytes:

1. magic number, 2. protocol version, 3. system info (endianness, type sizes),
4. the state dict, whose tensors reference storages by key ("persistent ids"),
5. the list of storage keys in file order,
6. for each key: an int64 element count, then the storage's raw little-endian bytes.

Tensors are strided views into their storage (a conv kernel saved from a channels-last
model has strides like ``(1, 32, 288, 96)``), so each is rebuilt with its own offset and
strides. Only the handful of globals a state dict needs are allowed; anything else in the
pickle is refused, because unpickling arbitrary classes runs arbitrary code.
"""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class name -> numpy dtype (little-endian, as the file's sys_info requires).
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file references a class or function this reader does not allow."""


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype[Any]


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype[Any]
    numel: int
    view_offset: int = 0  # pre-1.0 files could save views of storages


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _StorageRef,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Allows exactly what a plain state dict of tensors needs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        raise UnsafePickleError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unexpected storage type {storage_type!r}")
        view_offset = 0
        if view_metadata is not None:
            _view_key, view_offset, numel = view_metadata
        return _StorageRef(str(key), storage_type.dtype, int(numel), int(view_offset))


class _DataOnlyUnpickler(pickle.Unpickler):
    """For the header pickles and the key list: plain data, no globals at all."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"refusing to load {module}.{name} from a weights file")


def _read_header(f: IO[bytes]) -> None:
    magic = _DataOnlyUnpickler(f).load()
    if magic != LEGACY_MAGIC_NUMBER:
        raise ValueError("not a legacy PyTorch file (bad magic number)")
    protocol = _DataOnlyUnpickler(f).load()
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise ValueError(f"unsupported legacy protocol version {protocol}")
    sys_info = _DataOnlyUnpickler(f).load()
    if not sys_info.get("little_endian", False):
        raise ValueError("big-endian weight files are not supported")


def _read_storages(f: IO[bytes], keys: list[str], dtypes: dict[str, np.dtype[Any]]) -> dict[str, np.ndarray]:
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        dtype = dtypes.get(key)
        if dtype is None:
            raise ValueError(f"storage {key} is stored but no tensor uses it")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise ValueError(f"storage {key} is truncated")
        storages[key] = np.frombuffer(raw, dtype=dtype)
    return storages


def _materialize(ref: _TensorRef, storage: np.ndarray) -> np.ndarray:
    start = ref.storage.view_offset + ref.offset
    # The furthest element the view touches must lie inside the storage.
    last = start + sum((n - 1) * s for n, s in zip(ref.shape, ref.strides, strict=True) if n > 0)
    if any(n == 0 for n in ref.shape):
        return np.zeros(ref.shape, dtype=storage.dtype)
    if start < 0 or last >= storage.size or any(s < 0 for s in ref.strides):
        raise ValueError(f"tensor view {ref.shape}/{ref.strides} at {start} exceeds its storage")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[start:],
        shape=ref.shape,
        strides=tuple(s * itemsize for s in ref.strides),
        writeable=False,
    )
    return np.ascontiguousarray(view)


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the file's tensors as contiguous numpy arrays, keyed by parameter name."""
    with open(path, "rb") as f:
        _read_header(f)
        state = _StateDictUnpickler(f).load()
        if not isinstance(state, dict):
            raise ValueError("the file does not hold a state dict")
        keys = [str(k) for k in _DataOnlyUnpickler(f).load()]
        refs = {name: ref for name, ref in state.items() if isinstance(ref, _TensorRef)}
        if len(refs) != len(state):
            raise ValueError("the state dict holds values that are not tensors")
        dtypes = {ref.storage.key: ref.storage.dtype for ref in refs.values()}
        missing = set(dtypes) - set(keys)
        if missing:
            raise ValueError(f"storages referenced but not stored: {sorted(missing)[:3]}")
        storages = _read_storages(f, keys, dtypes)
    return {name: _materialize(ref, storages[ref.storage.key]) for name, ref in refs.items()}
