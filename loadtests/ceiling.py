"""The in-process ceiling: decode + preprocess + model, same runtime, no HTTP.

Run as its own process (it imports TensorFlow); prints one JSON object:
``python -m loadtests.ceiling --model models/efficientnet_lite0/1``.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from loadtests.in_process import GENEROUS_LIMITS, median_seconds
from loadtests.payloads import jpeg_payloads
from model_contract.imaging import image_to_tensor
from model_contract.manifest import ModelManifest
from server.runtimes import RuntimeOptions, load_runtime

BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def measure(version_dir: Path, repeats: int) -> dict[str, object]:
    manifest = ModelManifest.read(version_dir)
    runtime = load_runtime(manifest, version_dir, RuntimeOptions())
    spec = manifest.preprocessing
    payloads = jpeg_payloads()

    def decode(data: bytes) -> np.ndarray:
        return image_to_tensor(data, spec, GENEROUS_LIMITS)

    decode_s = median_seconds(lambda: [decode(b) for b in payloads], repeats * 4) / len(payloads)
    tensors = [decode(b) for b in payloads]
    model: dict[int, float] = {}
    for n in BATCH_SIZES:
        batch = np.stack([tensors[i % len(tensors)] for i in range(n)])
        runtime.predict(batch)  # warm this shape
        model[n] = median_seconds(partial(runtime.predict, batch), repeats)
    best = max(BATCH_SIZES, key=lambda n: n / model[n])

    # The pipeline at the best batch size: decode a batch on all cores, then run it.
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    batch_payloads = [payloads[i % len(payloads)] for i in range(best)]

    def pipeline() -> None:
        runtime.predict(np.stack(list(pool.map(decode, batch_payloads))))

    pipeline_s = median_seconds(pipeline, repeats)
    pool.shutdown()
    return {
        "decode_preprocess_ms_per_image": round(decode_s * 1000, 2),
        "model_ms_per_batch": {n: round(t * 1000, 2) for n, t in model.items()},
        "model_images_per_s": {n: round(n / t, 1) for n, t in model.items()},
        "best_batch_size": best,
        "batch1_model_ms": round(model[1] * 1000, 2),
        "ceiling_images_per_s": round(best / pipeline_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.repeats)))


if __name__ == "__main__":
    main()
