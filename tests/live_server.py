"""Run an app under real uvicorn on a free loopback port, in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from server.frontend import ServingServer
from server.settings import Settings


@contextmanager
def live_server(
    app: FastAPI,
    startup_timeout: float = 60.0,
    ready_path: str | None = "/ready",
    *,
    grpc: Settings | None = None,
) -> Iterator[str]:
    """Yield the base URL once uvicorn listens and, unless ``ready_path`` is None, once that
    path answers 200 (models loaded and warm). With ``grpc`` (settings with a ``grpc_port``),
    imgserve's gRPC server runs beside it, as ``imgserve serve`` runs it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config) if grpc is None else ServingServer(config, app, grpc)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    base_url = f"http://127.0.0.1:{port}"
    try:
        while ready_path and httpx.get(base_url + ready_path, timeout=10).status_code != 200:
            if time.monotonic() > deadline + 120:
                raise RuntimeError(f"{ready_path} never answered 200")
            time.sleep(0.05)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
