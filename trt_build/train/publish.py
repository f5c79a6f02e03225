"""The trained classifier as a servable version: its artifacts, its manifest, and the check that
the staged artifact serves what was validated.

The version holds what the default model's does: a SavedModel taking uint8 images (the
normalization and the softmax in its graph), the ``.keras`` network for the keras_jax runtime
(normalized input, logits out: that runtime applies both itself), and a manifest whose labels
are the class names; beside them the training report's confusion matrix. The validation images
are run through the staged SavedModel by the server's own runtime (``trt_build.verify``), and
the accuracy the manifest records is that one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model_contract.manifest import ModelManifest, TensorSpec
from trt_build.default_model.build import (
    INPUT_NAME,
    KERAS_FILE,
    OUTPUT_NAME,
    SAVED_MODEL_DIR,
    SIGNATURE_NAME,
    export_saved_model,
)
from trt_build.train.backbone import Backbone
from trt_build.verify import predict_all, served_model

# The staged SavedModel against the in-memory classifier on the same tensors: the same float32
# weights, the normalization in the graph instead of NumPy; any real mistake (a wrong mean, a
# head on the wrong layer) moves probabilities by far more.
MAX_SERVED_DIFFERENCE = 1e-4


class ExportMismatch(RuntimeError):
    """The staged artifact does not compute what was trained; nothing was published."""


def version_manifest(output: Path, backbone: Backbone, classes: list[str]) -> ModelManifest:
    size = backbone.preprocessing.crop_size
    return ModelManifest(
        name=output.parent.name,
        version=int(output.name),
        runtime="tensorflow",
        artifact=SAVED_MODEL_DIR,
        artifacts={"keras_jax": KERAS_FILE},
        signature=SIGNATURE_NAME,
        input=TensorSpec(name=INPUT_NAME, dtype="uint8", shape=[-1, size, size, 3]),
        output=TensorSpec(name=OUTPUT_NAME, dtype="float32", shape=[-1, len(classes)]),
        preprocessing=backbone.preprocessing,
        labels=classes,
        source=backbone.source(),
    )


def write_artifacts(classifier: Any, staging: Path, backbone: Backbone) -> None:
    export_saved_model(classifier, staging / SAVED_MODEL_DIR, backbone.preprocessing)
    classifier.save(staging / KERAS_FILE)


def served_probabilities(manifest: ModelManifest, staging: Path, tensors: np.ndarray, expected: np.ndarray) -> float:
    """Run ``tensors`` through the staged version as the server would; check the answers against
    ``expected`` (the in-memory classifier's) and return the largest difference."""
    with served_model(manifest, staging) as predict:
        served = predict_all(predict, tensors, 32, "checking the served model")
    difference = float(np.abs(served - expected).max()) if len(served) else 0.0
    if difference > MAX_SERVED_DIFFERENCE or not np.array_equal(served.argmax(1), expected.argmax(1)):
        raise ExportMismatch(
            f"the staged SavedModel differs from the trained classifier by up to {difference:.2g} in probability "
            "on the validation images; the model was not published"
        )
    return difference
