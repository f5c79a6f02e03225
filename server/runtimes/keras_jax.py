"""Keras 3 on the JAX backend: a ``.keras`` model as one jitted, stateless forward pass.

For GPUs. The variables live on the device. Images travel as uint8 and are normalised on the
device (a quarter of float32's host-to-device traffic). Each batch shape is compiled once, at
warm-up. Compute can run in bfloat16 or float16; the softmax is always float32. The process
must use the JAX backend: start it with ``KERAS_BACKEND=jax``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from model_contract.manifest import ModelManifest
from server.runtimes.base import RuntimeOptions


def _import_keras_on_jax() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(
            f"Keras is running on {keras.backend.backend()!r} in this process; start the server with KERAS_BACKEND=jax"
        )
    return keras


class KerasJaxRuntime:
    def __init__(self, manifest: ModelManifest, version_dir: Path, options: RuntimeOptions) -> None:
        keras = _import_keras_on_jax()
        import jax
        import jax.numpy as jnp

        self._jax = jax
        self._device = jax.devices(options.device)[0] if options.device else jax.devices()[0]
        model = keras.saving.load_model(manifest.artifact_path(version_dir, "keras_jax"), compile=False)
        compute = jnp.dtype(options.compute_dtype)

        def on_device(variables: list[Any]) -> list[Any]:
            # Only floating weights change precision; integer state (counters) stays as it is.
            return [
                jax.device_put(
                    v.value.astype(compute) if jnp.issubdtype(v.dtype, jnp.floating) else v.value, self._device
                )
                for v in variables
            ]

        self._trainable = on_device(model.trainable_variables)
        self._non_trainable = on_device(model.non_trainable_variables)
        mean, std = manifest.preprocessing.mean, manifest.preprocessing.std

        def forward(trainable: list[Any], non_trainable: list[Any], images: Any) -> Any:
            x = ((images.astype(jnp.float32) - mean) / std).astype(compute)
            logits, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

        # Donating the input lets XLA reuse its buffer on accelerators; the CPU backend
        # cannot use donated buffers and would only warn.
        donate = (2,) if self._device.platform != "cpu" else ()
        self._forward = jax.jit(forward, donate_argnums=donate)

    def to_device(self, batch: np.ndarray) -> Any:
        return self._jax.device_put(batch, self._device)

    def run_on_device(self, images: Any) -> Any:
        """The forward pass on a batch already on the device; the result stays there."""
        return self._forward(self._trainable, self._non_trainable, images)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.run_on_device(self.to_device(batch)))

    def close(self) -> None:
        self._trainable = []
        self._non_trainable = []
