"""A served version as Triton's model configuration extension describes it: what it takes,
what it gives, and how it batches. One JSON shape for HTTP (``/v2/models/{m}/config``) and, through
``json_format``, the gRPC ``ModelConfig`` message."""

from __future__ import annotations

from typing import Any

from server.service import ModelDescription
from server.v2_codec import v2_datatype

EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "model_configuration", "statistics"]
"""The Open Inference Protocol extensions imgserve speaks, over HTTP and gRPC alike."""

PLATFORMS = {"tensorflow": "tensorflow_savedmodel", "litert": "tensorflow_lite", "keras_jax": "keras_jax"}
"""Triton's platform names for imgserve's runtimes; other runtimes go by their own name."""


def platform_of(runtime: str) -> str:
    return PLATFORMS.get(runtime, runtime)


def _data_type(dtype: str) -> str:
    """A manifest's dtype as the config names it: ``float32`` is ``TYPE_FP32``."""
    return f"TYPE_{v2_datatype(dtype)}"


def _image_format(item_shape: tuple[int, ...]) -> str:
    """An image input of height, width and channels is NHWC once batched."""
    return "FORMAT_NHWC" if len(item_shape) == 3 and item_shape[-1] in (1, 3, 4) else "FORMAT_NONE"


def model_config(model: ModelDescription, request_timeout_s: float) -> dict[str, Any]:
    """Triton's configuration of ``model``. Dimensions leave out the batch dimension, as Triton's
    do when ``max_batch_size`` is above 0; ``max_batch_size`` is the most images one model call
    takes (a request may carry more, up to the per-request limit, and is cut across batches)."""
    manifest, batching = model.manifest, model.batching
    item_shape = manifest.item_shape
    return {
        "name": model.name,
        "platform": platform_of(model.runtime),
        "backend": model.runtime,
        "max_batch_size": batching.max_batch_size,
        "input": [
            {
                "name": manifest.input.name,
                "data_type": _data_type(manifest.input.dtype),
                "format": _image_format(item_shape),
                "dims": list(item_shape),
            }
        ],
        "output": [
            {
                "name": manifest.output.name,
                "data_type": _data_type(manifest.output.dtype),
                "dims": [d for d in manifest.output.shape if d != -1],
            }
        ],
        "dynamic_batching": {
            # Batches are padded up to these sizes; empty: any size up to max_batch_size.
            "preferred_batch_size": list(batching.allowed_batch_sizes),
            "max_queue_delay_microseconds": round(batching.max_queue_delay * 1e6),
            "preserve_ordering": True,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(request_timeout_s * 1e6),
                "allow_timeout_override": True,
                "max_queue_size": batching.max_queue_size,
            },
        },
    }
