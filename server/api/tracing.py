"""HTTP middleware, present when tracing is on: one server span per request, a child of the
client's ``traceparent``, named by its route once routed (``POST /v2/models/{name}/infer``)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.response_status import ResponseStatus
from server.tracing import Tracing


class TraceRequests:
    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"][:200]}
        with self.tracing.request(method, headers, attributes) as span:
            status = ResponseStatus(send)
            try:
                await self.app(scope, receive, status.send)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status.code)
