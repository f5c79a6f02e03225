"""The torch-free reader of the legacy PyTorch weight file."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

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
