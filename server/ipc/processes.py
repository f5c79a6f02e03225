"""The two kinds of child process of ``imgserve serve --workers N``, as spawn targets: the
model owner and a front-end worker. Each ends by itself if the supervisor disappears."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
from pathlib import Path
from typing import Any

from batching.clock import Clock
from server.process_logging import configure_logging, uvicorn_log_config
from server.settings import Settings
from server.shared_limits import SharedLimits

log = logging.getLogger(__name__)

ORPHAN_CHECK_S = 1.0


async def _watch_parent(parent: int, on_orphaned: Any) -> None:
    """A child whose supervisor was killed (-9) stops too, instead of serving unsupervised."""
    while os.getppid() == parent:
        await asyncio.sleep(ORPHAN_CHECK_S)
    log.error("the supervisor (pid %d) is gone; stopping", parent)
    on_orphaned()


def _start_process(settings: Settings, role: str) -> None:
    # Out of the supervisor's process group: a terminal's Ctrl-C (sent to the whole group) must
    # reach only the supervisor, which stops the workers first and the owner last.
    os.setpgid(0, 0)
    configure_logging(settings.log_level, role, settings.log_format)


def run_owner(settings: Settings, socket_path: Path, parent: int) -> None:
    """The model owner's main."""
    from server.ipc.owner import serve_models

    _start_process(settings, "model-owner")

    async def main() -> None:
        watch = asyncio.create_task(_watch_parent(parent, lambda: os.kill(os.getpid(), signal.SIGTERM)))
        try:
            await serve_models(settings, socket_path)
        finally:
            watch.cancel()

    asyncio.run(main())


def ring_prefix(supervisor: int, worker: int) -> str:
    """The names of one worker's shared-memory rings, so the supervisor can remove what a dead
    worker left (``/dev/shm/<prefix>*``)."""
    return f"imgserve-{supervisor}-w{worker}-"


def worker_settings(settings: Settings, workers: int, cores: int) -> Settings:
    """One worker's share of what is per process: decode threads and connections."""
    threads = settings.decode_threads or max(1, math.ceil(cores / workers))
    connections = max(1, math.ceil(settings.http.max_connections / workers))
    http = settings.http.model_copy(update={"max_connections": connections})
    return settings.model_copy(update={"decode_threads": threads, "http": http})


def run_worker(
    settings: Settings,
    index: int,
    sock: socket.socket,
    socket_path: Path,
    parent: int,
    shared: SharedLimits,
) -> None:
    """A front-end worker's main: HTTP on the shared socket, models through the owner."""
    from server.app import create_app
    from server.frontend import ServingServer
    from server.http_server import uvicorn_config
    from server.ipc.remote import RemoteCatalog
    from server.metrics import Metrics

    role = f"worker-{index}"
    _start_process(settings, role)

    def backend(metrics: Metrics, clock: Clock) -> RemoteCatalog:
        metrics.process_started(role)
        return RemoteCatalog(socket_path, metrics, clock, ring_prefix(parent, index))

    app = create_app(
        settings,
        backend=backend,
        admission=shared.admission(index),
        rate_limiter=shared.rate_limiter(index, settings.rate_limit),
    )
    log_config = uvicorn_log_config(settings.log_level, role, settings.log_format)
    config = uvicorn_config(app, settings, log_config=log_config)
    server = ServingServer(config, app, settings, reuse_port=True)  # gRPC: every worker on one port

    async def main() -> None:
        watch = asyncio.create_task(_watch_parent(parent, lambda: setattr(server, "should_exit", True)))
        try:
            await server.serve(sockets=[sock])
        finally:
            watch.cancel()

    asyncio.run(main())
