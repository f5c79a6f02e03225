"""LiteRT (.tflite) conversion of a SavedModel: fp32, fp16, dynamic-range or full int8.

Full int8 is calibrated on real images through the model's own preprocessing (the
representative dataset). The model keeps its uint8 image input and float probabilities out,
so the server feeds it exactly what it feeds the SavedModel.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


def convert(saved_model: Path, precision: str, calibration: np.ndarray | None = None) -> bytes:
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ValueError(f"LiteRT precision must be one of {', '.join(PRECISIONS)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise ValueError("int8 needs calibration images")

        def representative() -> Iterator[list[np.ndarray]]:
            for image in calibration:
                yield [image[None]]

        converter.representative_dataset = representative
        # Integer kernels everywhere they exist; the uint8->float cast at the input and the
        # softmax's float output stay as builtins.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    model: bytes = converter.convert()
    return model
