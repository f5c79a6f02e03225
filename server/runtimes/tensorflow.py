"""TensorFlow SavedModel runtime: one concrete signature with a dynamic batch dimension.

Calling the saved concrete function directly (rather than a Keras model's ``predict``)
means no retracing per batch size and no per-call Python overhead from Keras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model_contract.manifest import ModelManifest
from server.runtimes.base import RuntimeOptions

_threads_configured = False


def _configure_threads(tf: Any, options: RuntimeOptions) -> None:
    # TensorFlow accepts thread settings only before its first op, once per process.
    global _threads_configured
    if options.intra_op_threads and not _threads_configured:
        tf.config.threading.set_intra_op_parallelism_threads(options.intra_op_threads)
    _threads_configured = True


class TensorFlowRuntime:
    def __init__(self, manifest: ModelManifest, version_dir: Path, options: RuntimeOptions) -> None:
        import tensorflow as tf

        _configure_threads(tf, options)
        self._tf = tf
        self._loaded = tf.saved_model.load(str(manifest.artifact_path(version_dir, "tensorflow")))
        self._signature = self._loaded.signatures[manifest.signature]
        self._input_name = manifest.input.name
        self._output_name = manifest.output.name
        self._input_dtype = tf.as_dtype(manifest.input.dtype)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        inputs = self._tf.convert_to_tensor(batch, dtype=self._input_dtype)
        outputs = self._signature(**{self._input_name: inputs})
        result: np.ndarray = outputs[self._output_name].numpy()
        return result

    def close(self) -> None:
        del self._signature
        del self._loaded
