"""Measure one running server over HTTP (or gRPC): load, latency, its batch sizes, and CPU used."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx

from loadtests import grpc_load, wrk
from loadtests.closed_loop import run_closed_loop, run_open_loop
from loadtests.grpc_load import GrpcLoad
from loadtests.payloads import HttpRequest
from loadtests.system import children_cpu_seconds, tree_cpu_seconds


def batch_stats(base_url: str) -> tuple[float, float]:
    """(images run, batches run) so far, from the server's Prometheus histogram."""
    try:
        text = httpx.get(f"{base_url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0.0, 0.0
    values: dict[str, float] = {}
    for line in text.splitlines():
        for key in ("imgserve_batch_size_sum", "imgserve_batch_size_count"):
            if line.startswith(key + "{"):
                values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return values.get("imgserve_batch_size_sum", 0.0), values.get("imgserve_batch_size_count", 0.0)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def closed_loop(
    url: str, bodies: list[HttpRequest], clients: int, duration: float, *, grpc: GrpcLoad | None = None
) -> dict[str, Any]:
    """wrk when it is installed, else the Python generator; with ``grpc``, its gRPC calls from
    ``loadtests.grpc_load`` instead of ``bodies`` to ``url``."""
    if grpc is not None:
        return grpc_load.closed_loop(grpc, clients, duration)
    if wrk.available():
        return wrk.run_wrk(url, bodies, clients, duration)
    return asyncio.run(run_closed_loop(url, bodies, clients=clients, duration=duration)).summary()


def generator_name(grpc: GrpcLoad | None = None) -> str:
    """The closed loop's load generator."""
    if grpc is not None:
        return "grpc.aio"
    return "wrk" if wrk.available() else "python"


def cpu_ms_per_request(cpu_seconds: float, requests: float) -> float | None:
    return round(cpu_seconds * 1000 / requests, 3) if requests else None


def measure_point(
    base_url: str,
    bodies: list[HttpRequest],
    duration: float,
    *,
    clients: int | None = None,
    rate: float | None = None,
    server_pid: int | None = None,
    warm_s: float = 3.0,
    path: str = "/v1/classify",
    grpc: GrpcLoad | None = None,
) -> dict[str, object]:
    """One point: closed loop with ``clients``, or open loop at ``rate`` requests/s. With
    ``grpc``, the closed loop's calls go over gRPC instead (there is no gRPC open loop)."""
    url = f"{base_url}{path}"
    if grpc is not None and clients is None:
        raise ValueError("gRPC load is a closed loop: give clients")
    if clients is not None:
        closed_loop(url, bodies, clients, min(warm_s, duration), grpc=grpc)
    images_before, batches_before = batch_stats(base_url)
    server_before = tree_cpu_seconds(server_pid) if server_pid else 0.0
    generator_before = _own_cpu_seconds() + children_cpu_seconds()
    if clients is not None:
        figures: dict[str, object] = {"mode": "closed", **closed_loop(url, bodies, clients, duration, grpc=grpc)}
        generator = generator_name(grpc)
    elif rate is not None:
        result = asyncio.run(run_open_loop(url, bodies, rate=rate, duration=duration))
        figures = {"mode": "open", "rate": rate, **result.summary()}
        generator = "python"
    else:
        raise ValueError("give clients (closed loop) or rate (open loop)")
    seconds = float(figures["seconds"])  # type: ignore[arg-type]
    figures["generator"] = generator
    generator_cpu = figures.pop("generator_cpu_seconds", None)  # a gRPC generator's own, in its window
    if generator_cpu is None:
        generator_cpu = _own_cpu_seconds() + children_cpu_seconds() - generator_before
    figures["generator_cpu"] = round(float(generator_cpu) / seconds, 2)  # type: ignore[arg-type]
    if server_pid:
        server_cpu = tree_cpu_seconds(server_pid) - server_before
        figures["server_cpu"] = round(server_cpu / seconds, 2)
        answered = float(figures["requests_ok"]) + float(figures["errors"])  # type: ignore[arg-type]
        figures["server_cpu_ms_per_request"] = cpu_ms_per_request(server_cpu, answered)
    images_after, batches_after = batch_stats(base_url)
    if batches_after > batches_before:
        figures["mean_batch_size"] = round((images_after - images_before) / (batches_after - batches_before), 2)
    return figures


def measure_server(
    base_url: str, bodies: list[HttpRequest], clients: int, duration: float, server_pid: int | None = None
) -> dict[str, object]:
    return measure_point(base_url, bodies, duration, clients=clients, server_pid=server_pid)
