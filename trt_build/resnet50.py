"""ResNet50 with random weights: a heavier model for throughput measurements only.

Its classes mean nothing, and the manifest says so (``source.weights``). It is built as a
``.keras`` file for the keras_jax runtime, into its own repository by default, so that a
TensorFlow-only server never tries to load it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from model_contract.manifest import ModelManifest, TensorSpec
from model_contract.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

MODEL_NAME = "resnet50_random"
KERAS_FILE = "model.keras"


def build_resnet50_random(repository: Path, force: bool = False, seed: int = 0) -> Path:
    target = repository / MODEL_NAME / "1"
    if ModelManifest.is_version(target) and not force:
        return target
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.ResNet50(weights=None, classes=1000, classifier_activation=None)
    target.mkdir(parents=True, exist_ok=True)
    model.save(target / KERAS_FILE)
    ModelManifest(
        name=MODEL_NAME,
        version=1,
        runtime="keras_jax",
        artifact=KERAS_FILE,
        input=TensorSpec(name="images", dtype="uint8", shape=[-1, 224, 224, 3]),
        output=TensorSpec(name="probabilities", dtype="float32", shape=[-1, 1000]),
        preprocessing=PreprocessSpec(resize_shorter_side=256, crop_size=224, mean=127.5, std=127.5),
        labels=[f"random class {i}" for i in range(1000)],
        source={"weights": f"random (seed {seed}): for throughput only, predictions are meaningless"},
    ).write(target)
    log.info("built %s (random weights) at %s", MODEL_NAME, target)
    return target
