"""Batching strategies side by side, in one run, over real HTTP.

    python -m loadtests.batching_bench --duration 8

Three strategies, each a server configuration:
- ``busy``: imgserve's default. Batch while the model is busy, and never wait when it is idle.
- ``fixed_timeout``: once the model is free, wait up to T ms for a fuller batch
  (``max_queue_delay``, as Triton, Ray Serve and MLServer do).
- ``no_batching``: one image per model call.

Each runs against two models:
- ``simulated``: a model with a known cost (5 ms + 0.1 ms per image, sleeping like a device
  would), to see the serving path's own behaviour.
- ``real``: EfficientNet-Lite0 on the TensorFlow runtime, when ``--real-model`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from loadtests.measure import measure_server
from loadtests.payloads import HttpRequest, upload_requests
from loadtests.server_process import free_port, server_process
from model_contract.manifest import ModelManifest, TensorSpec
from model_contract.preprocess import PreprocessSpec

STRATEGIES: dict[str, dict[str, str]] = {
    "busy": {},
    "fixed_timeout": {"IMGSERVE_BATCHING__MAX_QUEUE_DELAY_MS": "10"},
    "no_batching": {"IMGSERVE_BATCHING__MAX_BATCH_SIZE": "1"},
}


def write_model(
    repository: Path,
    name: str,
    runtime: str,
    *,
    image_size: int = 224,
    resize_shorter_side: int = 256,
    classes: int = 1000,
    parameters: dict[str, float] | None = None,
    config: dict[str, object] | None = None,
    version: int = 1,
) -> Path:
    """A model version folder with a manifest (and, if given, the model's config.json), for
    runtimes that need no artifact: the simulated one here, fakes in tests."""
    folder = repository / name / str(version)
    folder.mkdir(parents=True)
    ModelManifest(
        name=name,
        version=version,
        runtime=runtime,
        artifact="",
        input=TensorSpec(name="images", dtype="uint8", shape=[-1, image_size, image_size, 3]),
        output=TensorSpec(name="probabilities", dtype="float32", shape=[-1, classes]),
        preprocessing=PreprocessSpec(resize_shorter_side=resize_shorter_side, crop_size=image_size),
        labels=[f"class{i}" for i in range(classes)],
        parameters=parameters or {},
    ).write(folder)
    if config is not None:
        (repository / name / "config.json").write_text(json.dumps(config))
    return folder


def write_simulated_model(repository: Path, fixed_s: float, per_image_s: float) -> None:
    params = {"fixed_seconds": fixed_s, "per_image_seconds": per_image_s}
    write_model(repository, "simulated", "simulated", parameters=params)


def run_model(
    name: str, repository: Path, model: str, clients: list[int], duration: float, bodies: list[HttpRequest]
) -> list[dict[str, object]]:
    rows = []
    for strategy, env in STRATEGIES.items():
        port = free_port()
        command = [sys.executable, "-m", "imgserve", "serve", "--port", str(port)]
        command += ["--model-repository", str(repository)]
        print(f"{name} / {strategy} ...", file=sys.stderr)
        with server_process(command, port, {**env, "IMGSERVE_DEFAULT_MODEL": model}) as (base, _):
            for n in clients:
                rows.append({"model": name, "strategy": strategy, **measure_server(base, bodies, n, duration)})
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| model | strategy | clients | req/s | p50 ms | p99 ms | mean batch | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['strategy']} | {r['clients']} | {r['req_per_s']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r.get('mean_batch_size', '-')} | {r['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured point")
    parser.add_argument("--clients", default="1,8,32,64", help="concurrencies for the simulated model")
    parser.add_argument("--real-model", type=Path, help="a model version folder, e.g. models/efficientnet_lite0/1")
    parser.add_argument("--real-clients", default="1,32", help="concurrencies for the real model")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args()

    bodies = upload_requests()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        write_simulated_model(repository, fixed_s=0.005, per_image_s=0.0001)
        clients = [int(c) for c in args.clients.split(",")]
        rows += run_model("simulated", repository, "simulated", clients, args.duration, bodies)
    if args.real_model:
        clients = [int(c) for c in args.real_clients.split(",")]
        repository = args.real_model.parent.parent
        rows += run_model("real", repository, args.real_model.parent.name, clients, args.duration, bodies)
    print(markdown(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
