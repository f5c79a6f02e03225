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

Sizes in the file are not trusted either: every tensor must address only elements of its
storage (a zero stride could otherwise expand 4 bytes into gigabytes), and the file is read
into memory first, so no declared length makes a read allocate more than the file holds.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
MAX_DIMS = 16
"""Most dimensions of one tensor; weights have at most five."""
MAX_ELEMENTS = 1 << 30
"""Most elements of all tensors together (4 GiB of float32); EfficientNet-Lite0 has 4.7 million."""
_MAX_INT64 = (1 << 63) - 1

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


def _index(value: object, what: str) -> int:
    """A non-negative int64, as torch stores sizes, strides and offsets."""
    if type(value) is not int or not 0 <= value <= _MAX_INT64:
        raise ValueError(f"{what} must be a non-negative int64")
    return value


def _dims(values: object, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or len(values) > MAX_DIMS:
        raise ValueError(f"tensor {what} must be a tuple of at most {MAX_DIMS} ints")
    return tuple(_index(v, f"tensor {what}") for v in values)


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: bool = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise ValueError("a tensor's storage is not a storage")
    shape, strides = _dims(size, "size"), _dims(stride, "stride")
    if len(shape) != len(strides):
        raise ValueError(f"tensor size {shape} and stride {strides} differ in length")
    # Empty dimensions count as 1, so that an empty tensor cannot declare an absurd shape either.
    if math.prod(max(n, 1) for n in shape) > MAX_ELEMENTS:
        raise ValueError(f"tensor of size {shape} is larger than {MAX_ELEMENTS} elements")
    return _TensorRef(storage, _index(storage_offset, "tensor storage offset"), shape, strides)


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
        if len(pid) != 6:
            raise ValueError("a storage reference must have 6 fields")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unexpected storage type {storage_type!r}")
        view_offset = 0
        if view_metadata is not None:
            if not (isinstance(view_metadata, tuple) and len(view_metadata) == 3):
                raise ValueError("a storage view must be (key, offset, size)")
            _view_key, view_offset, numel = view_metadata
        numel, view_offset = _index(numel, "storage size"), _index(view_offset, "storage view offset")
        return _StorageRef(str(key), storage_type.dtype, numel, view_offset)


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
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise ValueError("big-endian weight files are not supported")


def _read_storages(f: IO[bytes], keys: list[str], dtypes: dict[str, np.dtype[Any]]) -> dict[str, np.ndarray]:
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        dtype = dtypes.get(key)
        if dtype is None:
            raise ValueError(f"storage {key} is stored but no tensor uses it")
        if numel < 0:
            raise ValueError(f"storage {key} has a negative size")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise ValueError(f"storage {key} is truncated")
        storages[key] = np.frombuffer(raw, dtype=dtype)
    return storages


def _storage_view(ref: _StorageRef, storage: np.ndarray) -> np.ndarray:
    """The part of the stored storage that ``ref`` names (pre-1.0 files could save views)."""
    end = ref.view_offset + ref.numel
    if end > storage.size:
        raise ValueError(f"storage {ref.key} holds {storage.size} elements, not the {end} its tensors need")
    return storage[ref.view_offset : end]


def check_within_storage(shape: tuple[int, ...], strides: tuple[int, ...], offset: int, storage_numel: int) -> None:
    """A view may address only its storage's elements: as many at most, none past the end.

    Counting elements matters on its own: a zero stride repeats one element without
    reaching any further, so a 4-byte storage could be expanded to any size.
    """
    numel = math.prod(shape)
    if numel == 0:
        return  # addresses nothing
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if numel > storage_numel or last >= storage_numel:
        raise ValueError(
            f"tensor of size {shape}, stride {strides} at offset {offset} addresses more than its storage's "
            f"{storage_numel} elements"
        )


def _materialize(ref: _TensorRef, storage: np.ndarray) -> np.ndarray:
    base = _storage_view(ref.storage, storage)
    check_within_storage(ref.shape, ref.strides, ref.offset, base.size)
    if math.prod(ref.shape) == 0:
        return np.zeros(ref.shape, dtype=storage.dtype)
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        base[ref.offset :],
        shape=ref.shape,
        strides=tuple(s * itemsize for s in ref.strides),
        writeable=False,
    )
    return np.ascontiguousarray(view)


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the file's tensors as contiguous numpy arrays, keyed by parameter name."""
    # In memory, a read past the end returns what is there instead of allocating what a
    # (corrupt or hostile) length field asks for.
    f = io.BytesIO(Path(path).read_bytes())
    _read_header(f)
    state = _StateDictUnpickler(f).load()
    if not isinstance(state, dict):
        raise ValueError("the file does not hold a state dict")
    keys = _DataOnlyUnpickler(f).load()
    if not isinstance(keys, list):
        raise ValueError("the storage key list is not a list")
    refs = {name: ref for name, ref in state.items() if isinstance(ref, _TensorRef)}
    if len(refs) != len(state):
        raise ValueError("the state dict holds values that are not tensors")
    # Each tensor is bounded by its storage, but many tensors can share one storage.
    if sum(math.prod(ref.shape) for ref in refs.values()) > MAX_ELEMENTS:
        raise ValueError(f"the tensors hold more than {MAX_ELEMENTS} elements together")
    dtypes = {ref.storage.key: ref.storage.dtype for ref in refs.values()}
    missing = set(dtypes) - {str(k) for k in keys}
    if missing:
        raise ValueError(f"storages referenced but not stored: {sorted(missing)[:3]}")
    storages = _read_storages(f, [str(k) for k in keys], dtypes)
    return {name: _materialize(ref, storages[ref.storage.key]) for name, ref in refs.items()}
