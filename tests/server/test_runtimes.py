"""The runtime table and the simulated runtime (no TensorFlow needed)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from model_contract.manifest import ModelManifest
from server.runtimes import RUNTIMES, RuntimeOptions, load_runtime


def manifest(runtime: str, **parameters: float) -> ModelManifest:
    return ModelManifest.model_validate(
        {
            "name": "m",
            "version": 1,
            "runtime": runtime,
            "artifact": "",
            "input": {"name": "images", "dtype": "uint8", "shape": [-1, 4, 4, 3]},
            "output": {"name": "probabilities", "dtype": "float32", "shape": [-1, 10]},
            "preprocessing": {"resize_shorter_side": 4, "crop_size": 4},
            "labels": [str(i) for i in range(10)],
            "parameters": parameters,
        }
    )


def test_an_unknown_runtime_is_named_in_the_error_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="onnx") as error:
        load_runtime(manifest("onnx"), tmp_path, RuntimeOptions())
    assert all(name in str(error.value) for name in RUNTIMES)


def test_simulated_runtime_costs_its_cost_model_and_answers_deterministically(tmp_path: Path) -> None:
    runtime = load_runtime(
        manifest("simulated", fixed_seconds=0.02, per_image_seconds=0.001), tmp_path, RuntimeOptions()
    )
    batch = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (3, 7, 13, 7)])
    started = time.perf_counter()
    scores = runtime.predict(batch)
    assert time.perf_counter() - started >= 0.024  # 20 ms + 4 x 1 ms, at least
    assert scores.shape == (4, 10)
    assert scores.argmax(axis=1).tolist() == [3, 7, 3, 7]
