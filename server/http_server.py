"""uvicorn's configuration for imgserve, the same for the single process and every worker."""

from __future__ import annotations

import math
from typing import Any

import uvicorn
from fastapi import FastAPI

from server.http_protocol import bounded_http_protocol
from server.settings import Settings


def uvicorn_config(
    app: FastAPI,
    settings: Settings,
    *,
    max_connections: int | None = None,
    log_config: dict[str, Any] | None = None,
) -> uvicorn.Config:
    """``max_connections``: this process's share (default: all of ``settings.http``'s)."""
    connections = settings.http.max_connections if max_connections is None else max_connections
    extra: dict[str, Any] = {} if log_config is None else {"log_config": log_config}
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # imgserve writes its own access lines, with the request's id (server/access_log.py)
        # Slow and oversized clients: header limits, header and idle timeouts (server/http_protocol.py).
        http=bounded_http_protocol(settings.http),
        timeout_keep_alive=math.ceil(settings.http.keep_alive_timeout_s),  # the protocol arms the exact value
        ws="none",  # no WebSocket routes: an upgrade would hand the connection to a protocol without those limits
        # uvicorn answers 503 once connections >= limit, counting the asking one: +1 serves max_connections.
        limit_concurrency=connections + 1,
        # Shutdown waits this long for requests in progress, half-sent bodies included, then cancels them.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
        server_header=False,
        **extra,
    )
