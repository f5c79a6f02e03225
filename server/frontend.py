"""One process's front end: uvicorn serving the app over HTTP and, when ``IMGSERVE_GRPC_PORT`` is
set, the gRPC server beside it in the same event loop, over the same service.

gRPC starts once the app has started (its service exists then) and drains with HTTP. On SIGTERM:
1. for ``IMGSERVE_DRAIN_DELAY_S``, the server says it is not ready (``/ready`` 503, gRPC health
   NOT_SERVING) and goes on serving everything that comes, so that a load balancer takes it out
   of rotation before it stops listening;
2. then both listeners close: new connections are refused and new gRPC calls UNAVAILABLE;
3. requests and calls in progress get ``IMGSERVE_DRAIN_TIMEOUT_S``; the app's models close only
   after both protocols have finished, and the process exits."""

from __future__ import annotations

import logging
import socket
import sys
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from server.grpc_api.server import GrpcFrontend
from server.settings import Settings

log = logging.getLogger(__name__)


class ServingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, settings: Settings, *, reuse_port: bool = False) -> None:
        """``reuse_port``: several processes share the gRPC port (``--workers``)."""
        super().__init__(config)
        self.grpc = GrpcFrontend(app, settings, reuse_port=reuse_port) if settings.grpc_port else None
        self._app = app
        self._drain_delay_s = settings.drain_delay_s
        self._close_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first SIGTERM or SIGINT starts the drain delay; the next one (or the delay's end)
        closes the listeners, as uvicorn does at once without a delay."""
        if self._close_at is not None or not self._drain_delay_s or not self.started:
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # uvicorn re-raises it once stopped: the exit status says why
        self._close_at = time.monotonic() + self._drain_delay_s
        self._app.state.service.drain()
        log.info("draining: not ready from now on; serving %.1f s more before the listeners close", self._drain_delay_s)

    async def on_tick(self, counter: int) -> bool:
        if self._close_at is not None and time.monotonic() >= self._close_at:
            self.should_exit = True
        return await super().on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit or self.grpc is None:
            return
        try:
            await self.grpc.start()
        except Exception as exc:  # the port is taken, or the address cannot be bound
            log.error("cannot serve gRPC: %s", exc)
            await self.lifespan.shutdown()
            sys.exit(1)
        self._app.state.before_close.append(self.grpc.stopped)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        service = getattr(self._app.state, "service", None)
        if service is not None:
            service.drain()  # not ready; and the job runners take no new job
        if self.grpc is not None:
            self.grpc.begin_drain()  # at once, beside HTTP's; the app's lifespan waits for its end
        await super().shutdown(sockets)


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``port``: checked once by the supervisor before its workers
    bind it with SO_REUSEPORT, which would otherwise share it silently with another server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the server binds: a port whose last connections are in TIME_WAIT is free; Linux
        # still refuses one that something listens on.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
