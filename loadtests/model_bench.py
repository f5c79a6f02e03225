"""Model-only throughput, in process: per batch size and compute dtype, with the input
already on the device and copied from host memory each call. Run as its own process (it
imports the runtime's framework); prints one JSON object.

    KERAS_BACKEND=jax python -m loadtests.model_bench --model models/efficientnet_lite0/1 \\
        --runtime keras_jax --dtypes float32,bfloat16 --batch-sizes 1,8,32,128
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.in_process import GENEROUS_LIMITS, median_seconds
from loadtests.payloads import jpeg_payloads
from model_contract.imaging import image_to_tensor
from model_contract.manifest import ModelManifest
from server.runtimes import RuntimeOptions, load_runtime


def measure(model: Path, runtime_name: str, dtype: str, batch_sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    manifest = ModelManifest.read(model)
    runtime: Any = load_runtime(manifest, model, RuntimeOptions(preferred_runtime=runtime_name, compute_dtype=dtype))
    spec = manifest.preprocessing
    tensors = [image_to_tensor(b, spec, GENEROUS_LIMITS) for b in jpeg_payloads()]
    rows = []
    for n in batch_sizes:
        batch = np.stack([tensors[i % len(tensors)] for i in range(n)])
        runtime.predict(batch)  # compile / warm this shape
        from_host = median_seconds(partial(runtime.predict, batch), repeats)
        row: dict[str, Any] = {
            "runtime": runtime_name,
            "dtype": dtype,
            "batch": n,
            "from_host_ms": round(from_host * 1000, 3),
            "from_host_images_per_s": round(n / from_host, 1),
        }
        if hasattr(runtime, "to_device"):
            on_device = runtime.to_device(batch)

            def resident(x: Any = on_device) -> None:
                runtime.run_on_device(x).block_until_ready()

            resident()
            seconds = median_seconds(resident, repeats)
            row["on_device_ms"] = round(seconds * 1000, 3)
            row["on_device_images_per_s"] = round(n / seconds, 1)
        rows.append(row)
    runtime.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--runtime", default="keras_jax")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--batch-sizes", default="1,8,32,128")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = [r for d in args.dtypes.split(",") for r in measure(args.model, args.runtime, d, sizes, args.repeats)]
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
