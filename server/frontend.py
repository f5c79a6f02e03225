"""One process's front end: uvicorn serving the app over HTTP and, when ``IMGSERVE_GRPC_PORT`` is
set, the gRPC server beside it in the same event loop, over the same service.

gRPC starts once the app has started (its service exists then) and drains with HTTP: on
SIGTERM new gRPC calls are refused at once, calls in progress get the drain timeout, and the
app's models close only after both protocols have finished."""

from __future__ import annotations

import logging
import socket
import sys

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
        if self.grpc is not None:
            self.grpc.begin_drain()  # at once, beside HTTP's; the app's lifespan waits for its end
        await super().shutdown(sockets)


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``port``: checked once by the supervisor before its workers
    bind it with SO_REUSEPORT, which would otherwise share it silently with another server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
