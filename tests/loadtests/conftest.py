"""A live imgserve for the load tools' tests: ``imgserve serve`` as its own process on the
simulated runtime (a known model cost, no TensorFlow start-up), HTTP and gRPC each on a free
loopback port, started once for this package and stopped by its PID."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtests.batching_bench import write_simulated_model
from loadtests.server_process import free_port, server_process


@dataclass(frozen=True)
class LiveServer:
    base_url: str  # http://127.0.0.1:port
    grpc_target: str  # 127.0.0.1:port
    pid: int


def start_simulated(
    repository: Path, fixed_s: float, env: dict[str, str] | None = None
) -> tuple[list[str], int, int, dict[str, str]]:
    """The command, HTTP port, gRPC port and environment of a server of the simulated model."""
    write_simulated_model(repository, fixed_s=fixed_s, per_image_s=0.0001)
    port, grpc_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "imgserve", "serve", "--port", str(port),
        "--grpc-port", str(grpc_port), "--model-repository", str(repository),
    ]  # fmt: skip
    return command, port, grpc_port, {"IMGSERVE_DEFAULT_MODEL": "simulated", **(env or {})}


@pytest.fixture(scope="package")
def simulated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    command, port, grpc_port, env = start_simulated(tmp_path_factory.mktemp("models"), fixed_s=0.002)
    with server_process(command, port, env, startup_s=60) as (base_url, process):
        yield LiveServer(base_url, f"127.0.0.1:{grpc_port}", process.pid)
