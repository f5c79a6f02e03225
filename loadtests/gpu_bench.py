"""The GPU benchmark: one command on a GPU host (no TensorFlow needed there).

    python -m loadtests.gpu_bench --models models/efficientnet_lite0/1,models_gpu/resnet50_random/1

For each model:
(a) model-only throughput on the keras_jax runtime, per batch size and dtype, with the input
    already on the device and copied from the host (``loadtests.model_bench``, run as its
    own process).
(b) end-to-end: ``imgserve serve`` on keras_jax, driven over loopback (wrk if installed) at
    each client count. It uses JPEG uploads to /v1/classify, then preprocessed uint8 images as
    v2 binary tensors (no decode, no JSON floats). Each point records req/s, p50/p99, the
    server's mean batch, and CPU.
(c) GPU utilisation and memory during each end-to-end point, sampled from ``nvidia-smi``
    when it is present.

It prints a table and writes ``gpu_bench.json``. The ratio end-to-end / model-only shows how
much of the device the HTTP front end can feed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtests.measure import measure_point
from loadtests.payloads import preprocessed_photos, upload_requests, v2_binary_body
from loadtests.server_process import free_port, server_process
from model_contract.manifest import ModelManifest


class GpuSampler:
    """``nvidia-smi`` in the background, 4 samples a second; a no-op without it."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(suffix=".csv", delete=False)  # noqa: SIM115 - closed in stop()

    def start(self) -> None:
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
            self._process = subprocess.Popen([*query, "-lms", "250"], stdout=self._log, stderr=subprocess.DEVNULL)

    def stop(self) -> dict[str, float]:
        if self._process is None:
            return {}
        self._process.terminate()
        self._process.wait(timeout=10)
        self._log.close()
        samples = []
        for line in Path(self._log.name).read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and all(p.replace(".", "").isdigit() for p in parts):
                samples.append((float(parts[0]), float(parts[1])))
        os.unlink(self._log.name)
        if not samples:
            return {}
        return {
            "gpu_util_mean_pct": round(sum(u for u, _ in samples) / len(samples), 1),
            "gpu_util_max_pct": max(u for u, _ in samples),
            "gpu_memory_max_mib": max(m for _, m in samples),
        }


def device_name() -> str:
    if not shutil.which("nvidia-smi"):
        return "no nvidia-smi"
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip()


def model_only(model: Path, dtypes: str, batch_sizes: str) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "loadtests.model_bench", "--model", str(model)]
    command += ["--dtypes", dtypes, "--batch-sizes", batch_sizes]
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    run = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    rows: list[dict[str, Any]] = json.loads(run.stdout.strip().splitlines()[-1])
    return rows


def end_to_end(model: Path, clients: list[int], duration: float, max_batch: int, dtype: str) -> list[dict[str, Any]]:
    sizes = [s for s in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if s < max_batch] + [max_batch]
    env = {
        "KERAS_BACKEND": "jax",
        "IMGSERVE_RUNTIME": "keras_jax",
        "IMGSERVE_COMPUTE_DTYPE": dtype,
        "IMGSERVE_DEFAULT_MODEL": model.parent.name,
        "IMGSERVE_BATCHING__MAX_BATCH_SIZE": str(max_batch),
        "IMGSERVE_BATCHING__ALLOWED_BATCH_SIZES": json.dumps(sizes),
        "IMGSERVE_BATCHING__MAX_CONCURRENT_BATCHES": "2",
        "IMGSERVE_BATCHING__MAX_QUEUE_SIZE": str(max(1024, 4 * max_batch)),
        "IMGSERVE_LIMITS__MAX_REQUESTS_IN_PROGRESS": str(max(1024, 2 * max(clients))),
    }
    port = free_port()
    command = [sys.executable, "-m", "imgserve", "serve", "--port", str(port)]
    command += ["--model-repository", str(model.parent.parent)]
    size = ModelManifest.read(model).preprocessing.crop_size
    payloads = {
        "jpeg upload": ("/v1/classify", upload_requests()),
        "v2 binary uint8": (
            f"/v2/models/{model.parent.name}/infer",
            [v2_binary_body(image[None]) for image in preprocessed_photos(size)],
        ),
    }
    rows = []
    with server_process(command, port, env, startup_s=600) as (base_url, process):
        for payload, (path, requests) in payloads.items():
            for n in clients:
                sampler = GpuSampler()
                sampler.start()
                figures = measure_point(base_url, requests, duration, clients=n, server_pid=process.pid, path=path)
                row = {"model": model.parent.name, "dtype": dtype, "payload": payload, "clients": n, **figures}
                rows.append({**row, **sampler.stop()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="models/efficientnet_lite0/1", help="comma-separated version folders")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch-sizes", default="1,8,32,128,256")
    parser.add_argument("--clients", default="1,32,128,256")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-batch", type=int, default=128, help="the server's max_batch_size")
    parser.add_argument("--e2e-dtype", default="float32")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/gpu_bench.json"))
    args = parser.parse_args()

    report: dict[str, Any] = {"device": device_name(), "cpus": os.cpu_count(), "models": {}}
    clients = [int(c) for c in args.clients.split(",")]
    for model in (Path(m) for m in args.models.split(",")):
        print(f"{model}: model only ...", file=sys.stderr)
        only = model_only(model, args.dtypes, args.batch_sizes)
        print(f"{model}: end to end ...", file=sys.stderr)
        e2e = end_to_end(model, clients, args.duration, args.max_batch, args.e2e_dtype)
        best = max(
            r.get("on_device_images_per_s", r["from_host_images_per_s"]) for r in only if r["dtype"] == args.e2e_dtype
        )
        served = max(float(r["req_per_s"]) for r in e2e)
        report["models"][model.parent.name] = {
            "model_only": only,
            "end_to_end": e2e,
            "end_to_end_over_model_only": round(served / best, 3),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"device: {report['device']}")
    for name, entry in report["models"].items():
        print(f"\n## {name}\n")
        print(table(entry["model_only"], ["dtype", "batch", "from_host_images_per_s", "on_device_images_per_s"]))
        print()
        columns = ["payload", "clients", "req_per_s", "p50_ms", "p99_ms", "mean_batch_size", "server_cpu"]
        columns.append("gpu_util_mean_pct")
        print(table(entry["end_to_end"], columns))
        print(f"\nend to end / model only: {entry['end_to_end_over_model_only']}")


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "-")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
