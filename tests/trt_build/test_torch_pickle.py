"""The torch-free reader of the legacy PyTorch weight file."""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from trt_build.default_model import torch_pickle
from trt_build.default_model.build import weights_file
from trt_build.default_model.torch_pickle import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    UnsafePickleError,
    load_legacy_state_dict,
)


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return load_legacy_state_dict(weights_file())


def test_reads_every_tensor_with_its_shape(state_dict: dict[str, np.ndarray]) -> None:
    assert len(state_dict) == 296
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64
    parameters = sum(
        v.size for k, v in state_dict.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert parameters == 4_652_008  # EfficientNet-Lite0's published parameter count (4.65M)


def test_known_values_are_read_through_the_tensor_strides(state_dict: dict[str, np.ndarray]) -> None:
    stem = state_dict["_conv_stem.weight"]
    np.testing.assert_allclose(stem[0, 0, 0], [-1.1103361, -1.3087704, -0.01015691], rtol=1e-6)
    np.testing.assert_allclose(
        state_dict["_bn0.running_var"][:4], [1.6314286, 70.371574, 14.107358, 3.942132], rtol=1e-6
    )
    # The stem kernel is stored channels-last (strides 1, 32, 288, 96): reading its storage
    # as if it were contiguous would scramble it, and the first row would differ.
    assert stem.flags["C_CONTIGUOUS"]
    assert not np.allclose(stem.reshape(-1)[:3], stem.transpose(0, 2, 3, 1).reshape(-1)[:3])


def _legacy_file(path: Path, payload: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(LEGACY_MAGIC_NUMBER, f, protocol=2)
        pickle.dump(LEGACY_PROTOCOL_VERSION, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, f, protocol=2)
        pickle.dump(payload, f, protocol=2)
        pickle.dump([], f, protocol=2)


class _RunsACommand:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    _legacy_file(path, {"weight": _RunsACommand()})
    with pytest.raises(UnsafePickleError, match="system"):
        load_legacy_state_dict(path)


def test_refuses_files_that_are_not_legacy_weights(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="magic"):
        load_legacy_state_dict(path)


def test_a_truncated_file_is_an_error_not_garbage(tmp_path: Path) -> None:
    data = weights_file().read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises((ValueError, EOFError, struct.error)):
        load_legacy_state_dict(path)


# Crafted files: the pickle opcodes torch writes for a tensor, without torch.
def _push(value: object) -> bytes:
    """Opcodes that push a plain value onto the unpickler's stack (no memo, no PROTO or STOP)."""
    data = io.BytesIO()
    pickler = pickle.Pickler(data, protocol=2)
    pickler.fast = True  # no memo: fragments can be concatenated
    pickler.dump(value)
    return data.getvalue()[2:-1]


def _tensor(key: str, numel: int, size: object, stride: object, offset: object = 0) -> bytes:
    """``torch._utils._rebuild_tensor_v2(<storage key>, offset, size, stride)``, a float32 storage."""
    storage = b"(" + _push("storage") + b"ctorch\nFloatStorage\n" + b"".join(map(_push, (key, "cpu", numel, None)))
    storage += b"tQ"  # TUPLE, BINPERSID
    args = b"(" + storage + _push(offset) + _push(size) + _push(stride) + b"t"
    return b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"  # GLOBAL ... REDUCE


def _crafted_file(path: Path, tensors: dict[str, bytes], storages: dict[str, np.ndarray]) -> Path:
    state = b"\x80\x02}" + b"".join(_push(name) + tensor + b"s" for name, tensor in tensors.items()) + b"."
    with open(path, "wb") as f:
        pickle.dump(LEGACY_MAGIC_NUMBER, f, protocol=2)
        pickle.dump(LEGACY_PROTOCOL_VERSION, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, f, protocol=2)
        f.write(state)
        pickle.dump(list(storages), f, protocol=2)
        for values in storages.values():
            f.write(struct.pack("<q", values.size) + values.astype("<f4").tobytes())
    return path


def test_a_crafted_file_reads_back_through_its_strides(tmp_path: Path) -> None:
    storage = np.arange(12, dtype=np.float32)
    tensors = {
        "transposed": _tensor("0", 12, (4, 3), (1, 4)),
        "slice": _tensor("0", 12, (2,), (2,), offset=9),
        "empty": _tensor("0", 12, (0, 3), (3, 1)),
    }
    read = load_legacy_state_dict(_crafted_file(tmp_path / "ok.pth", tensors, {"0": storage}))
    np.testing.assert_array_equal(read["transposed"], storage.reshape(3, 4).T)
    np.testing.assert_array_equal(read["slice"], [9, 11])
    assert read["empty"].shape == (0, 3)


@pytest.mark.parametrize(
    ("size", "stride", "offset", "message"),
    [
        pytest.param((1 << 20,), (0,), 0, "addresses more than its storage's 4 elements", id="zero-stride-expands"),
        pytest.param((64, 64), (0, 0), 0, "addresses more than its storage's 4 elements", id="zero-strides-2d"),
        pytest.param((5,), (1,), 0, "addresses more than its storage's 4 elements", id="more-elements"),
        pytest.param((2,), (1,), 3, "addresses more than its storage's 4 elements", id="offset-past-end"),
        pytest.param((2, 2), (1, 3), 0, "addresses more than its storage's 4 elements", id="stride-past-end"),
        pytest.param((2,), (-1,), 1, "tensor stride must be a non-negative int64", id="negative-stride"),
        pytest.param((-2,), (1,), 0, "tensor size must be a non-negative int64", id="negative-size"),
        pytest.param((2,), (1,), -1, "storage offset must be a non-negative int64", id="negative-offset"),
        pytest.param((2.0,), (1,), 0, "tensor size must be a non-negative int64", id="float-size"),
        pytest.param((1 << 64,), (1,), 0, "tensor size must be a non-negative int64", id="beyond-int64"),
        pytest.param(4, 1, 0, "tensor size must be a tuple", id="not-a-tuple"),
        pytest.param((2, 2), (1,), 0, "differ in length", id="lengths-differ"),
        pytest.param((1,) * 17, (1,) * 17, 0, "at most 16 ints", id="too-many-dims"),
        pytest.param((0, 1 << 40), (1, 1), 0, "larger than", id="empty-but-absurd"),
    ],
)
def test_a_tensor_must_stay_within_its_storage(
    tmp_path: Path, size: object, stride: object, offset: object, message: str
) -> None:
    path = _crafted_file(tmp_path / "bad.pth", {"w": _tensor("0", 4, size, stride, offset)}, {"0": np.ones(4)})
    with pytest.raises(ValueError, match=re.escape(message)):
        load_legacy_state_dict(path)


def test_a_storage_must_hold_what_its_reference_declares(tmp_path: Path) -> None:
    path = _crafted_file(tmp_path / "short.pth", {"w": _tensor("0", 100, (4,), (1,))}, {"0": np.ones(4)})
    with pytest.raises(ValueError, match="storage 0 holds 4 elements, not the 100"):
        load_legacy_state_dict(path)


def test_a_negative_storage_length_is_refused(tmp_path: Path) -> None:
    path = _crafted_file(tmp_path / "negative.pth", {"w": _tensor("0", 4, (4,), (1,))}, {"0": np.ones(4)})
    data = bytearray(path.read_bytes())
    data[-24:-16] = struct.pack("<q", -1)  # the storage's length field, before its 16 bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="negative size"):
        load_legacy_state_dict(path)


def test_tensors_sharing_a_storage_are_bounded_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_pickle, "MAX_ELEMENTS", 100)
    tensors = {f"w{i}": _tensor("0", 40, (40,), (1,)) for i in range(3)}
    path = _crafted_file(tmp_path / "shared.pth", tensors, {"0": np.ones(40)})
    with pytest.raises(ValueError, match="more than 100 elements together"):
        load_legacy_state_dict(path)
    del tensors["w2"]  # 80 elements: within the bound
    assert len(load_legacy_state_dict(_crafted_file(tmp_path / "two.pth", tensors, {"0": np.ones(40)}))) == 2
