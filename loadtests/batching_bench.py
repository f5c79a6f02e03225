"""Batching strategies side by side, in one run, over real HTTP.

    python -m loadtests.batching_bench --duration 8

Four strategies, each a server configuration:
- ``busy``: batch while the model is busy, and never wait when it is idle.
- ``adaptive``: imgserve's default: ``busy``, and once the model is free, a partial batch waits
  up to ``max_adaptive_delay`` for requests the recent load says are on their way, when a
  batch's fixed cost dominates.
- ``fixed_timeout``: once the model is free, wait up to T ms for a fuller batch
  (``max_queue_delay``, as Triton, Ray Serve and MLServer do).
- ``no_batching``: one image per model call.

Each runs against two models:
- ``simulated``: a model with a known cost (``--fixed-ms``, 5 ms, + ``--per-image-ms``,
  0.1 ms, per image, sleeping like a device would), to see the serving path's own behaviour.
- ``real``: EfficientNet-Lite0 on the TensorFlow runtime, when ``--real-model`` is given.

``--in-process`` measures the batcher alone, without HTTP, decoding or a server process: the
adaptive wait (``max_adaptive_delay``) off and on, side by side, on a closed loop against a
model that sleeps ``--fixed-ms`` + ``--per-image-ms`` a batch on its own thread, whose clients
come back ``--return-ms`` after each answer (the round trip a real client makes). Medians of
``--repeats`` runs:

    python -m loadtests.batching_bench --in-process --clients 1,16,64 --duration 3 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from batching import BatchingConfig, MicroBatcher
from loadtests.measure import measure_server
from loadtests.payloads import HttpRequest, upload_requests
from loadtests.server_process import free_port, server_process
from model_contract.manifest import ModelManifest, TensorSpec
from model_contract.preprocess import PreprocessSpec

NO_ADAPTIVE = {"IMGSERVE_BATCHING__MAX_ADAPTIVE_DELAY_MS": "0"}
STRATEGIES: dict[str, dict[str, str]] = {
    "busy": NO_ADAPTIVE,
    "adaptive": {},
    "fixed_timeout": {"IMGSERVE_BATCHING__MAX_QUEUE_DELAY_MS": "10", **NO_ADAPTIVE},
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
    name: str,
    repository: Path,
    model: str,
    clients: list[int],
    duration: float,
    bodies: list[HttpRequest],
    strategies: list[str],
) -> list[dict[str, object]]:
    rows = []
    for strategy in strategies:
        env = STRATEGIES[strategy]
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


async def _batcher_closed_loop(
    clients: int, adaptive_s: float, duration: float, fixed_s: float, per_image_s: float, return_s: float
) -> dict[str, float]:
    """One closed-loop point against the batcher alone, after a short warm-up."""
    loop = asyncio.get_running_loop()
    model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
    network = ThreadPoolExecutor(clients, thread_name_prefix="client")
    sizes: list[tuple[float, int]] = []

    async def run(items: list[int]) -> list[int]:
        sizes.append((time.perf_counter(), len(items)))
        await loop.run_in_executor(model_thread, time.sleep, fixed_s + per_image_s * len(items))
        return items

    config = BatchingConfig(max_batch_size=16, max_adaptive_delay=adaptive_s, max_queue_size=max(256, clients))
    batcher: MicroBatcher[int, int] = MicroBatcher(run, config)
    batcher.start()
    warm_s = min(1.0, duration / 3)
    started = time.perf_counter()
    measure_from, stop_at = started + warm_s, started + warm_s + duration
    latencies: list[float] = []

    async def client(index: int) -> None:
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            if return_s > 0:  # the way back to the client and in again, off the event loop
                await loop.run_in_executor(network, time.sleep, return_s)
            await batcher.submit(index)
            if sent >= measure_from and time.perf_counter() <= stop_at:
                latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(client(i) for i in range(clients)))
    await batcher.close(drain_timeout=5)
    model_thread.shutdown()
    network.shutdown()
    measured = [n for at, n in sizes if measure_from <= at <= stop_at]
    lat = np.asarray(latencies) * 1000
    return {
        "req_per_s": len(latencies) / duration,
        "mean_batch_size": statistics.mean(measured) if measured else 0.0,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def in_process(
    clients: list[int],
    adaptive_ms: list[float],
    duration: float,
    repeats: int,
    fixed_ms: float,
    per_image_ms: float,
    return_ms: float,
) -> list[dict[str, object]]:
    """Each point ``repeats`` times, the settings interleaved so that a noisy neighbour
    spreads over all of them; the median of each figure."""
    runs: dict[tuple[int, float], list[dict[str, float]]] = {}
    for _ in range(repeats):
        for n in clients:
            for ms in adaptive_ms:
                point = _batcher_closed_loop(
                    n, ms / 1000, duration, fixed_ms / 1000, per_image_ms / 1000, return_ms / 1000
                )
                runs.setdefault((n, ms), []).append(asyncio.run(point))
    rows: list[dict[str, object]] = []
    for (n, ms), points in runs.items():
        row: dict[str, object] = {"clients": n, "max_adaptive_delay_ms": ms}
        for key in ("req_per_s", "mean_batch_size", "p50_ms", "p99_ms"):
            row[key] = round(statistics.median(p[key] for p in points), 2)
        rows.append(row)
    return rows


def in_process_markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| clients | max_adaptive_delay ms | req/s | mean batch | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['max_adaptive_delay_ms']} | {r['req_per_s']} | {r['mean_batch_size']} | "
            f"{r['p50_ms']} | {r['p99_ms']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured point")
    parser.add_argument("--clients", default="1,8,32,64", help="concurrencies for the simulated model")
    parser.add_argument("--real-model", type=Path, help="a model version folder, e.g. models/efficientnet_lite0/1")
    parser.add_argument("--real-clients", default="1,32", help="concurrencies for the real model")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="which of them to run, over HTTP")
    parser.add_argument("--fixed-ms", type=float, default=5.0, help="the simulated model's cost per batch")
    parser.add_argument("--per-image-ms", type=float, default=0.1, help="the simulated model's cost per image")
    parser.add_argument("--in-process", action="store_true", help="the batcher alone: adaptive wait off and on")
    parser.add_argument("--adaptive-ms", default="0,2", help="--in-process: max_adaptive_delay values, 0 is off")
    parser.add_argument("--repeats", type=int, default=3, help="--in-process: runs per point (medians reported)")
    parser.add_argument("--return-ms", type=float, default=0.5, help="--in-process: a client's round trip")
    args = parser.parse_args()

    if args.in_process:
        clients = [int(c) for c in args.clients.split(",")]
        adaptive = [float(ms) for ms in args.adaptive_ms.split(",")]
        options = (args.duration, args.repeats, args.fixed_ms, args.per_image_ms, args.return_ms)
        points = in_process(clients, adaptive, *options)
        print(in_process_markdown(points))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            report = {"cpus": os.cpu_count(), "options": vars(args), "rows": points}
            args.out.write_text(json.dumps(report, indent=2, default=str))
        return

    strategies = args.strategies.split(",")
    bodies = upload_requests()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        write_simulated_model(repository, fixed_s=args.fixed_ms / 1000, per_image_s=args.per_image_ms / 1000)
        clients = [int(c) for c in args.clients.split(",")]
        rows += run_model("simulated", repository, "simulated", clients, args.duration, bodies, strategies)
    if args.real_model:
        clients = [int(c) for c in args.real_clients.split(",")]
        repository = args.real_model.parent.parent
        rows += run_model("real", repository, args.real_model.parent.name, clients, args.duration, bodies, strategies)
    print(markdown(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
