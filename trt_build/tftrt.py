"""TF-TRT: TensorRT engines inside a SavedModel, FP16 or INT8 (calibrated on real images).

pip TensorFlow >= 2.18 is built without TensorRT. This module needs TensorFlow built with it:
NVIDIA's NGC image (Dockerfile.gpu) or TF <= 2.17 with TensorRT installed. Everything that
does not need TensorRT (checks, the calibration input, the engine sizes) works anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")


class TensorRTUnavailable(RuntimeError):
    pass


def require_tensorrt() -> None:
    import tensorflow as tf

    if not tf.sysconfig.get_build_info().get("is_tensorrt_build", False):
        raise TensorRTUnavailable(
            f"this TensorFlow ({tf.__version__}) was built without TensorRT, so TF-TRT cannot run here "
            "(pip TensorFlow has shipped without it since 2.18). Build inside the GPU image instead: "
            "`docker build -f Dockerfile.gpu -t imgserve:gpu .` then run `imgserve build ... --target tftrt` in it. "
            "For a CPU deployment, `--target litert` needs no TensorRT."
        )


def engine_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to ``max_batch_size``, which is always included: the buckets the
    batcher pads to, so every batch the server forms has a prebuilt engine."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1")
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if (1 << i) < max_batch_size]
    return [*sizes, max_batch_size]


def calibration_batches(images: np.ndarray, batch_size: int) -> Callable[[], Iterator[tuple[np.ndarray]]]:
    """The ``calibration_input_fn`` TF-TRT wants: batches of preprocessed real images."""
    if len(images) < batch_size:
        raise ValueError(f"need at least {batch_size} calibration images, got {len(images)}")

    def batches() -> Iterator[tuple[np.ndarray]]:
        for start in range(0, len(images) - batch_size + 1, batch_size):
            yield (images[start : start + batch_size],)

    return batches


def convert(
    saved_model: Path,
    output: Path,
    precision: str,
    max_batch_size: int,
    item_shape: tuple[int, ...],
    calibration: np.ndarray | None = None,
) -> None:
    """Convert, build an engine for every bucket ahead of time, save as a SavedModel."""
    require_tensorrt()
    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    if precision not in PRECISIONS:
        raise ValueError(f"TF-TRT precision must be one of {', '.join(PRECISIONS)}")
    converter = trt.TrtGraphConverterV2(
        input_saved_model_dir=str(saved_model),
        precision_mode=getattr(trt.TrtPrecisionMode, precision.replace("fp", "FP").upper()),
        use_dynamic_shape=True,
        dynamic_shape_profile_strategy="Optimal",
    )
    if precision == "int8":
        if calibration is None:
            raise ValueError("int8 needs calibration images")
        converter.convert(calibration_input_fn=calibration_batches(calibration, 8))
    else:
        converter.convert()

    def engine_inputs() -> Iterator[tuple[np.ndarray]]:
        for n in engine_batch_sizes(max_batch_size):
            yield (np.zeros((n, *item_shape), np.uint8),)

    # Engines are built now, never on a live request.
    converter.build(input_fn=engine_inputs)
    converter.save(str(output))
