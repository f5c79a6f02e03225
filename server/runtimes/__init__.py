"""Runtimes, one module each, chosen by the manifest's ``runtime`` field from one table.

Modules are imported only when a model needs them, so serving a .tflite model never pays
for importing TensorFlow, and the table can name runtimes whose packages are absent.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from model_contract.manifest import ModelManifest
from server.runtimes.base import Runtime, RuntimeOptions

RUNTIMES: dict[str, str] = {
    "tensorflow": "server.runtimes.tensorflow:TensorFlowRuntime",
    "simulated": "server.runtimes.simulated:SimulatedRuntime",
    "keras_jax": "server.runtimes.keras_jax:KerasJaxRuntime",
    "litert": "server.runtimes.litert:LiteRTRuntime",
}


def choose_runtime(manifest: ModelManifest, preferred: str | None) -> str:
    """The preferred runtime when this version carries an artifact for it, else its own."""
    return preferred if preferred and preferred in manifest.artifacts else manifest.runtime


def load_runtime(manifest: ModelManifest, version_dir: Path, options: RuntimeOptions) -> Runtime:
    name = choose_runtime(manifest, options.preferred_runtime)
    try:
        target = RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(sorted(RUNTIMES))}") from None
    module_name, class_name = target.split(":")
    runtime_class = getattr(import_module(module_name), class_name)
    runtime: Runtime = runtime_class(manifest, version_dir, options)
    return runtime


__all__ = ["RUNTIMES", "Runtime", "RuntimeOptions", "choose_runtime", "load_runtime"]
