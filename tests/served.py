"""One server for a test module, in this process or as ``imgserve serve --workers N``: the
end-to-end modules run their tests against each, so every behaviour they assert holds across
the process boundary too."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, SecretStr

from loadtests.server_process import free_port, server_process
from server.app import create_app
from server.settings import Settings
from tests.live_server import live_server

# "in-process": today's single process; 1 and 2: front-end workers beside a model owner.
TOPOLOGIES: list[Any] = ["in-process", 1, 2]
SPLIT_TOPOLOGIES: list[Any] = [1, 2]


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the IMGSERVE_* variables that make them (nested sections as JSON)."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        key = f"IMGSERVE_{name.upper()}"
        if isinstance(value, SecretStr):
            env[key] = value.get_secret_value()
        elif isinstance(value, BaseModel):
            env[key] = value.model_dump_json()
        elif isinstance(value, list):
            env[key] = ",".join(value)  # the comma-separated fields (hosts, origins)
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        else:
            env[key] = str(value)
    return env


@contextmanager
def served(settings: Settings, topology: Any, ready_path: str = "/ready") -> Iterator[str]:
    """The base URL of a ready server with ``settings``."""
    if topology == "in-process":
        with live_server(create_app(settings), ready_path=ready_path) as url:
            yield url
        return
    with served_process(settings, int(topology), ready_path=ready_path) as (url, _):
        yield url


@contextmanager
def served_with_grpc(settings: Settings, topology: Any) -> Iterator[tuple[str, str]]:
    """A ready server with ``settings`` and its gRPC server on a free port: (HTTP base URL, gRPC
    target "127.0.0.1:port")."""
    settings = settings.model_copy(update={"host": "127.0.0.1", "grpc_port": free_port()})
    target = f"127.0.0.1:{settings.grpc_port}"
    if topology == "in-process":
        with live_server(create_app(settings), grpc=settings) as url:
            yield url, target
        return
    with served_process(settings, int(topology)) as (url, _):
        yield url, target


@contextmanager
def served_process(
    settings: Settings, workers: int, ready_path: str = "/ready", stderr: Any = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    # gRPC only where the test asked for it (a port of its own): servers must not share 8001.
    grpc_port = settings.grpc_port if "grpc_port" in settings.model_fields_set else 0
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port, "grpc_port": grpc_port})
    command = [sys.executable, "-m", "imgserve", "serve", "--workers", str(workers)]
    with server_process(
        command, port, env=settings_env(settings), startup_s=180, ready_path=ready_path, stderr=stderr
    ) as (url, process):
        yield url, process
