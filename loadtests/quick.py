"""Quick side-by-side benchmark: imgserve vs imgserve without batching vs the naive
one-``predict``-per-request server, against the in-process ceiling, in one run.

    python -m loadtests.quick --clients 32 --duration 20

Every server runs as its own process on 127.0.0.1 and is stopped by its PID. The load
generator runs in this process, which never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import httpx

from loadtests.closed_loop import run_closed_loop
from loadtests.payloads import jpeg_payloads, multipart_body
from loadtests.server_process import free_port, server_process


def _batch_stats(base: str) -> tuple[float, float]:
    try:
        text = httpx.get(f"{base}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0.0, 0.0
    values = {}
    for line in text.splitlines():
        for key in ("imgserve_batch_size_sum", "imgserve_batch_size_count"):
            if line.startswith(key + "{"):
                values[key] = float(line.rsplit(" ", 1)[1])
    return values.get("imgserve_batch_size_sum", 0.0), values.get("imgserve_batch_size_count", 0.0)


def measure_server(base: str, bodies: list[tuple[bytes, str]], clients: int, duration: float) -> dict[str, object]:
    url = f"{base}/v1/classify"
    asyncio.run(run_closed_loop(url, bodies, clients=clients, duration=min(3.0, duration)))  # warm connections
    images_before, batches_before = _batch_stats(base)
    result = asyncio.run(run_closed_loop(url, bodies, clients=clients, duration=duration))
    images_after, batches_after = _batch_stats(base)
    summary: dict[str, object] = dict(result.summary())
    if batches_after > batches_before:
        summary["mean_batch_size"] = round((images_after - images_before) / (batches_after - batches_before), 2)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/efficientnet_lite0/1"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--latency-duration", type=float, default=10.0, help="the 1-client run")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args()

    payloads = jpeg_payloads()
    bodies = [multipart_body(p) for p in payloads]
    python = sys.executable
    report: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "clients": args.clients,
        "duration_s": args.duration,
        "payload_bytes": [len(p) for p in payloads],
    }
    print("measuring the in-process ceiling ...", file=sys.stderr)
    ceiling = subprocess.run(
        [python, "-m", "loadtests.ceiling", "--model", str(args.model)], check=True, capture_output=True, text=True
    )
    report["ceiling"] = json.loads(ceiling.stdout.strip().splitlines()[-1])

    repository = str(args.model.parent.parent)
    configs = {
        "imgserve": (
            [python, "-m", "server.cli", "serve", "--model-repository", repository],
            {},
        ),
        "imgserve_no_batching": (
            [python, "-m", "server.cli", "serve", "--model-repository", repository],
            {"IMGSERVE_BATCHING__MAX_BATCH_SIZE": "1"},
        ),
        "naive": ([python, "-m", "loadtests.naive_server", "--model", str(args.model)], {}),
    }
    runs: dict[str, object] = {}
    for name, (command, env) in configs.items():
        port = free_port()
        print(f"measuring {name} ...", file=sys.stderr)
        with server_process([*command, "--port", str(port)], port, env) as (base, _):
            entry = {"concurrent": measure_server(base, bodies, args.clients, args.duration)}
            if name == "imgserve":
                entry["one_client"] = measure_server(base, bodies, 1, args.latency_duration)
        runs[name] = entry
    report["runs"] = runs

    ceiling_ips = report["ceiling"]["ceiling_images_per_s"]  # type: ignore[index]
    imgserve = runs["imgserve"]["concurrent"]["req_per_s"]  # type: ignore[index]
    report["ratios"] = {
        "imgserve_vs_naive": round(imgserve / runs["naive"]["concurrent"]["req_per_s"], 2),  # type: ignore[index]
        "imgserve_vs_no_batching": round(imgserve / runs["imgserve_no_batching"]["concurrent"]["req_per_s"], 2),  # type: ignore[index]
        "imgserve_vs_ceiling": round(imgserve / ceiling_ips, 2),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
