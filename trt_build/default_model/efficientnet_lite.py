"""EfficientNet-Lite0 in Keras, and the mapping from the PyTorch port's weight names.

Lite differs from EfficientNet-B0 in what makes it quantization- and accelerator-friendly:
ReLU6 instead of swish, no squeeze-and-excitation, and a stem (32) and head (1280) that are
not scaled. Convolutions use TensorFlow "same" padding (asymmetric for stride 2), which is
what the original TF checkpoints were trained with; BatchNorm epsilon is 1e-3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

BATCH_NORM_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
IMAGE_SIZE = 224


@dataclass(frozen=True)
class StageSpec:
    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    input_filters: int
    output_filters: int


# Lite0: width and depth multipliers are 1.0, so the base table is used as is.
LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class BlockSpec:
    index: int
    kernel_size: int
    stride: int
    expand_ratio: int
    input_filters: int
    output_filters: int

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.input_filters == self.output_filters


def expand_blocks(stages: tuple[StageSpec, ...] = LITE0_STAGES) -> list[BlockSpec]:
    """One entry per block: the first block of a stage strides, the rest keep the size."""
    blocks: list[BlockSpec] = []
    for stage in stages:
        for r in range(stage.repeats):
            blocks.append(
                BlockSpec(
                    index=len(blocks),
                    kernel_size=stage.kernel_size,
                    stride=stage.stride if r == 0 else 1,
                    expand_ratio=stage.expand_ratio,
                    input_filters=stage.input_filters if r == 0 else stage.output_filters,
                    output_filters=stage.output_filters,
                )
            )
    return blocks


def build_keras_model(image_size: int = IMAGE_SIZE, dropout_rate: float = 0.2) -> keras.Model:
    """The Lite0 graph; input is the normalized float image (N, H, W, 3), output logits."""
    import keras
    from keras import layers

    def conv_bn(
        x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str, act: bool
    ) -> keras.KerasTensor:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f"{name}_bn")(x)
        return layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x) if act else x

    inputs = keras.Input(shape=(image_size, image_size, 3), name="normalized_image")
    x = conv_bn(inputs, STEM_FILTERS, 3, 2, "stem", act=True)
    for block in expand_blocks():
        name = f"block{block.index}"
        shortcut = x
        if block.expand_ratio != 1:
            x = conv_bn(x, block.input_filters * block.expand_ratio, 1, 1, f"{name}_expand", act=True)
        x = layers.DepthwiseConv2D(
            block.kernel_size, strides=block.stride, padding="same", use_bias=False, name=f"{name}_dw_conv"
        )(x)
        x = layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f"{name}_dw_bn")(x)
        x = layers.ReLU(max_value=6.0, name=f"{name}_dw_relu6")(x)
        x = conv_bn(x, block.output_filters, 1, 1, f"{name}_project", act=False)
        if block.has_skip:
            x = layers.Add(name=f"{name}_add")([x, shortcut])
    x = conv_bn(x, HEAD_FILTERS, 1, 1, "head", act=True)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout_rate, name="dropout")(x)
    logits = layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, logits, name="efficientnet_lite0")


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 0, 1)  # torch (ch, 1, kh, kw) -> keras (kh, kw, ch, 1)


def _bn(sd: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]]


def keras_weights_from_torch(sd: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> weights, from the PyTorch port's state dict names."""
    out: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv_kernel(sd["_conv_stem.weight"])],
        "stem_bn": _bn(sd, "_bn0"),
        "head_conv": [_conv_kernel(sd["_conv_head.weight"])],
        "head_bn": _bn(sd, "_bn1"),
        "logits": [sd["_fc.weight"].T, sd["_fc.bias"]],
    }
    for block in expand_blocks():
        src, dst = f"_blocks.{block.index}", f"block{block.index}"
        if block.expand_ratio != 1:
            out[f"{dst}_expand_conv"] = [_conv_kernel(sd[f"{src}._expand_conv.weight"])]
            out[f"{dst}_expand_bn"] = _bn(sd, f"{src}._bn0")
        out[f"{dst}_dw_conv"] = [_depthwise_kernel(sd[f"{src}._depthwise_conv.weight"])]
        out[f"{dst}_dw_bn"] = _bn(sd, f"{src}._bn1")
        out[f"{dst}_project_conv"] = [_conv_kernel(sd[f"{src}._project_conv.weight"])]
        out[f"{dst}_project_bn"] = _bn(sd, f"{src}._bn2")
    return out


def load_torch_weights(model: keras.Model, sd: dict[str, np.ndarray]) -> None:
    """Assign every weight, checking that no layer is left at its initial values."""
    weights = keras_weights_from_torch(sd)
    weighted_layers = {layer.name for layer in model.layers if layer.weights}
    if weighted_layers != set(weights):
        raise ValueError(f"layer mismatch: {sorted(weighted_layers ^ set(weights))[:5]}")
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)
    used = sum(v.size for vs in weights.values() for v in vs)
    stored = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    if used != stored:
        raise ValueError(f"{stored - used} stored values were not used")
