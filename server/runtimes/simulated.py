"""A model that costs time and nothing else: ``fixed + per_image · n`` seconds a batch.

For capacity planning and for benchmarking the serving path (HTTP, decode, batching)
against a known model cost, on machines without the real model's accelerator. Its scores
are a deterministic function of the input (class = mean pixel value modulo the class count),
so answers can still be checked.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from model_contract.manifest import ModelManifest
from server.runtimes.base import RuntimeOptions


class SimulatedRuntime:
    def __init__(self, manifest: ModelManifest, version_dir: Path, options: RuntimeOptions) -> None:
        self._fixed = float(manifest.parameters.get("fixed_seconds", 0.005))
        self._per_image = float(manifest.parameters.get("per_image_seconds", 0.0001))
        self._classes = manifest.output.shape[-1]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self._fixed + self._per_image * len(batch))  # sleeps release the GIL, as device work does
        scores = np.zeros((len(batch), self._classes), np.float32)
        classes = batch.reshape(len(batch), -1).mean(axis=1).astype(int) % self._classes
        scores[np.arange(len(batch)), classes] = 1.0
        return scores

    def close(self) -> None:
        pass
