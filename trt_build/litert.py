"""LiteRT (.tflite) conversion of a SavedModel: fp32, fp16, dynamic-range or full int8.

Full int8 is calibrated on real images through the model's own preprocessing (the
representative dataset). The model keeps its uint8 image input and float probabilities out,
so the server feeds it exactly what it feeds the SavedModel. Its softmax stays float: int8
probabilities come in steps of 1/256, which turns near ties into exact ties (broken by class
index) and rounds the smaller top-5 scores to zero, for an op that is 1,000 values of work.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
# Ops an int8 build leaves in float (see above).
FLOAT_OPS_IN_INT8 = ["SOFTMAX"]


def convert(saved_model: Path, precision: str, calibration: np.ndarray | None = None) -> bytes:
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ValueError(f"LiteRT precision must be one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        return quantize_int8(saved_model, calibration, float_ops=FLOAT_OPS_IN_INT8)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    model: bytes = converter.convert()
    return model


def quantize_int8(
    saved_model: Path, calibration: np.ndarray | None, float_ops: Sequence[str] = (), float_nodes: Sequence[str] = ()
) -> bytes:
    """Full int8, except the ops of these types and the ops writing these tensors, which stay
    float. Selective quantization the documented way: the quantization debugger calibrates
    with the representative dataset and its denylists keep what they name in float."""
    import tensorflow as tf

    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=list(float_ops), denylisted_nodes=list(float_nodes)
    )
    model: bytes = quantization_debugger(
        int8_converter(saved_model, calibration), options
    ).get_nondebug_quantized_model()
    return model


def int8_converter(saved_model: Path, calibration: np.ndarray | None) -> Any:
    import tensorflow as tf

    if calibration is None or len(calibration) == 0:
        raise ValueError("int8 needs calibration images")

    def representative() -> Iterator[list[np.ndarray]]:
        for image in calibration:
            yield [image[None]]

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    # Integer kernels everywhere they exist; the uint8->float cast at the input stays a builtin.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def quantization_debugger(converter: Any, options: Any = None, debug_images: np.ndarray | None = None) -> Any:
    """The debugger calibrates at once; ``debug_images`` are only read by its ``run()``."""
    import tensorflow as tf

    images = () if debug_images is None else debug_images
    with warnings.catch_warnings():
        # The debugger opens its own tf.lite.Interpreter, deprecated for ai_edge_litert's.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
        return tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: ([image[None]] for image in images), debug_options=options
        )
