"""Per-route request metrics, as pure ASGI middleware."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.response_status import ResponseStatus
from server.metrics import Metrics


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
        status = ResponseStatus(send)
        try:
            await self.app(scope, receive, status.send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(template, scope["method"], str(status.code)).inc()
            self.metrics.request_seconds.labels(template).observe(time.perf_counter() - started)
