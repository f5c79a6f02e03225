"""Where full int8 costs agreement: the same quantization with parts of the model left float.

    python -m trt_build.sensitivity models/efficientnet_lite0/1 [--float-first 3,20] [--eval-count 300]

For each variant it prints top-1 agreement with the float source on every image and on the
images the source decides (the build gate's figure):
- ``int8``: the build ``imgserve build --precision int8`` makes (softmax float)
- ``first K float``: also the first K quantized layers float, for each K
- ``softmax only``: every layer float but the int8 softmax, i.e. what rounding the
  probabilities to 1/256 alone does to near ties
and each layer's error in units of its quantization step, from the quantization debugger.
"""

from __future__ import annotations

import argparse
import csv
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_contract.manifest import ModelManifest
from trt_build import litert
from trt_build.eval_images import evaluation_tensors
from trt_build.verify import compare, predict_all, served_model


@dataclass(frozen=True)
class Layer:
    op: str
    tensor: str
    error_in_steps: float  # RMS error over the quantization scale


def quantized_layers(saved_model: Path, calibration: np.ndarray, debug_images: np.ndarray) -> list[Layer]:
    """The model's quantized layers in graph order, each with its own error given float inputs."""
    debugger = litert.quantization_debugger(litert.int8_converter(saved_model, calibration), None, debug_images)
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = csv.DictReader(io.StringIO(dump.getvalue()))
    return [
        Layer(row["op_name"], row["tensor_name"], float(row["mean_squared_error"]) ** 0.5 / float(row["scale"]))
        for row in rows
    ]


def variants(layers: list[Layer], float_first: list[int]) -> dict[str, tuple[list[str], list[str]]]:
    """Variant name -> (float op types, float tensors)."""
    softmax = [layer.tensor for layer in layers if layer.op == "SOFTMAX"]
    out: dict[str, tuple[list[str], list[str]]] = {"int8": (litert.FLOAT_OPS_IN_INT8, [])}
    out |= {f"first {k} float": (litert.FLOAT_OPS_IN_INT8, [layer.tensor for layer in layers[:k]]) for k in float_first}
    out["softmax only"] = ([], [layer.tensor for layer in layers if layer.tensor not in softmax])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="float source version, e.g. models/efficientnet_lite0/1")
    parser.add_argument("--float-first", default="3,20", help="K values: keep the first K quantized layers float")
    parser.add_argument("--eval-count", type=int, default=300)
    parser.add_argument("--calibration-count", type=int, default=200)
    args = parser.parse_args(argv)

    manifest = ModelManifest.read(args.source)
    saved_model = manifest.artifact_path(args.source, manifest.runtime)
    images = evaluation_tensors(manifest.preprocessing, args.eval_count, seed=0)
    calibration = evaluation_tensors(manifest.preprocessing, args.calibration_count, seed=1)
    layers = quantized_layers(saved_model, calibration, calibration[:20])
    with served_model(manifest, args.source) as served:
        source = predict_all(served, images, 32, "source")

    print(f"{'variant':<16} {'float layers':>12} {'top-1 all':>10} {'decided':>8}")
    for name, (float_ops, float_nodes) in variants(layers, [int(k) for k in args.float_first.split(",")]).items():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.tflite"
            path.write_bytes(litert.quantize_int8(saved_model, calibration, float_ops, float_nodes))
            variant = manifest.model_copy(update={"runtime": "litert", "artifact": path.name, "artifacts": {}})
            with served_model(variant, Path(tmp)) as served:
                built = predict_all(served, images, 32, name)
        figures = compare(source, built)  # the gate's default decided probability
        print(
            f"{name:<16} {len(float_nodes) + len(float_ops):>12} {figures['top1_agreement']:>10.4f} "
            f"{figures['decided_top1_agreement']:>8.4f}  ({figures['decided_images']:.0f} decided of {len(images)})"
        )
    print("\nlayer error in quantization steps (RMS / scale), largest first:")
    for layer in sorted(layers, key=lambda layer: -layer.error_in_steps)[:8]:
        print(f"  {layer.error_in_steps:5.2f}  {layer.op:<18} {layer.tensor[:90]}")


if __name__ == "__main__":
    main()
