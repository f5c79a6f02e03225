"""The status an ASGI app answered, for middleware that reports it after the app returns."""

from __future__ import annotations

from starlette.types import Message, Send


class ResponseStatus:
    """Wraps ``send``; ``code`` is the status the app started its response with, or 500 when
    it raised before answering (the server then answers 500 itself)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.code = 500

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.code = message["status"]
        await self._send(message)
