"""Pure ASGI middleware: a request body limit, and per-route request metrics."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.error_handlers import render
from server.errors import ErrorKind, ServiceError
from server.metrics import Metrics


class BodySizeLimit:
    """Refuse bodies over ``max_bytes`` before reading them when Content-Length says so,
    and stop reading a chunked body the moment it passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        error: ServiceError | None = None
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    error = self._too_large()
            except ValueError:
                error = ServiceError(ErrorKind.BAD_REQUEST, "Content-Length is not a number")
        if error is not None:
            await render(error, scope["path"], {"Connection": "close"})(scope, receive, send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> ServiceError:
        return ServiceError(ErrorKind.PAYLOAD_TOO_LARGE, f"request body exceeds {self.max_bytes} bytes")


class RequestMetrics:
    """Count and time every request by its route template (not its raw path, which would
    make one time series per model name a client invents)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(template).observe(time.perf_counter() - started)
