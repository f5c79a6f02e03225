"""LiteRT (.tflite) on the CPU with XNNPACK: quantized models for CPU deployments.

One interpreter per batch size, with its input resized to that size, created at warm-up.
Resizing a single interpreter per call would re-plan its memory every time. Threads:
``IMGSERVE_INFERENCE_THREADS``, or one per core.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from model_contract.manifest import ModelManifest
from server.runtimes.base import RuntimeOptions


class LiteRTRuntime:
    def __init__(self, manifest: ModelManifest, version_dir: Path, options: RuntimeOptions) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter_class = Interpreter
        self._path = str(manifest.artifact_path(version_dir, "litert"))
        self._threads = options.intra_op_threads or os.cpu_count() or 1
        self._by_size: dict[int, Any] = {}

    def _interpreter(self, size: int) -> Any:
        interpreter = self._by_size.get(size)
        if interpreter is None:
            interpreter = self._interpreter_class(model_path=self._path, num_threads=self._threads)
            details = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(details["index"], [size, *details["shape"][1:]])
            interpreter.allocate_tensors()
            self._by_size[size] = interpreter
        return interpreter

    def predict(self, batch: np.ndarray) -> np.ndarray:
        interpreter = self._interpreter(len(batch))
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
        interpreter.invoke()
        # Copy: the interpreter reuses its output buffer on the next invoke.
        result: np.ndarray = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()
        return result

    def close(self) -> None:
        self._by_size.clear()
