"""Outermost HTTP middleware: gives each request its id (``X-Request-ID``, the client's when it
is sane, echoed in the response) for every log line written while it is handled, and, when the
access log is on, writes the request's access line once it is answered."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.access_log import log_http
from server.request_context import HEADER, accepted_request_id, request_id

_HEADER = HEADER.encode()


class RequestLog:
    def __init__(self, app: ASGIApp, *, access_log: bool) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = next((v for k, v in scope["headers"] if k == _HEADER), None)
        rid = accepted_request_id(None if offered is None else offered.decode("latin-1"))
        encoded = rid.encode()
        token = request_id.set(rid)
        started, status = time.perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (_HEADER, encoded)]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                peer = scope.get("client")
                log_http(
                    scope["method"], scope["path"], status, time.perf_counter() - started, peer[0] if peer else None
                )
            request_id.reset(token)
