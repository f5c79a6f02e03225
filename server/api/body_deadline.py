"""Pure ASGI middleware: a request's body must arrive within a deadline.

uvicorn has no body read timeout: a client that sends its headers and half a body holds the
request, and every limit it counts against, for as long as it likes.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_contract.errors import ErrorKind, ServiceError


class BodyDeadline:
    """Reading the body must end within ``timeout_s`` of the request's start; past that,
    ``receive`` raises a REQUEST_TIMEOUT ``ServiceError`` (408, and the connection closed).

    Once the body's last message has arrived, ``receive`` passes through with no deadline:
    the app then awaits it only to learn that the client has gone (``api/disconnect.py``).
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_received = False

        async def receive_by_deadline() -> Message:
            nonlocal body_received
            if body_received:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise ServiceError(
                    ErrorKind.REQUEST_TIMEOUT, f"request body not received within {self.timeout_s:g} s"
                ) from None
            body_received = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_by_deadline, send)
