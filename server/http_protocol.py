"""uvicorn's httptools protocol, bounded against slow and oversized clients.

With httptools, uvicorn puts no limit on header size or count, and its keep-alive timer is
armed only after a response: a connection that never sends a byte, or sends its headers one
byte at a time, is never closed. This subclass adds, per connection:

- a header limit (``max_header_bytes``, ``max_headers``): 431 and the connection closed;
- a header timeout (``header_timeout_s``): from the connection's opening for its first request,
  from the first byte for later ones, until the headers are complete; then 408 and closed;
- an idle timeout (``keep_alive_timeout_s``) whenever no request is in progress, the first
  one included: the connection is closed without an answer.

The body timeout is ASGI middleware (``server/api/body_deadline.py``), where the app reads it.

It overrides uvicorn internals (checked against uvicorn 0.30 to 0.54): the parser callbacks
``on_message_begin``/``on_url``/``on_header``/``on_headers_complete``; ``data_received``
turning a parser error into ``send_400_response(msg)``; ``timeout_keep_alive_task``, the timer
that ``data_received``, ``on_response_complete`` and ``connection_lost`` cancel or arm, with
``timeout_keep_alive_handler``; and ``cycle`` (``response_complete``, ``keep_alive``), the
request being handled.
"""

from __future__ import annotations

import asyncio
import http
import json
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.settings import HttpSettings

# After a 408 or 431, keep reading (and dropping) the client's bytes this long before closing:
# closing a socket with unread input sends a reset, which can destroy the answer unread.
LINGER_S = 2.0
# Bytes a header field costs beyond its name and value: ": " and CRLF.
_FIELD_OVERHEAD = 4


class HeadersTooLarge(Exception):
    """Raised from a parser callback; httptools re-raises it as ``HttpParserCallbackError``."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[HttpSettings]  # set by bounded_http_protocol

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn types it int (whole seconds); call_later takes the exact value.
        self.timeout_keep_alive = self.limits.keep_alive_timeout_s  # type: ignore[assignment]
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._reading_headers = False  # from a request's first byte to the end of its headers
        self._messages = 0  # requests begun on this connection
        self._header_bytes = 0  # URL and completed header fields of the current request
        self._chunk_bytes = 0  # whole reads that fell inside the current request's headers
        self._header_fields = 0
        self._headers_too_large = False
        self._answered = False  # a 408 or 431 went out: the rest of the input is dropped

    # Connection lifetime

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_idle()  # a connection that never sends a byte is idle from the start
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._linger):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return  # lingering after an answer: drop the input
        was_reading, message = self._reading_headers, self._messages
        # Keep the idle timer from uvicorn's data_received, which cancels it on any byte: bytes that
        # begin no request (stray CRLFs, the rest of a body answered unread) must not extend it.
        idle, self.timeout_keep_alive_task = self.timeout_keep_alive_task, None
        super().data_received(data)  # feeds the parser: the callbacks below may refuse the request
        if self._answered or self.transport.is_closing() or self.transport.get_protocol() is not self:
            if idle is not None:
                idle.cancel()
            return  # refused, closed, or handed over to a WebSocket protocol
        if self._reading_headers or (self.cycle is not None and not self.cycle.response_complete):
            if idle is not None:
                idle.cancel()  # a request is in progress: the header timer or the app governs
        else:
            self.timeout_keep_alive_task = idle
            self._arm_idle()
        if was_reading and self._reading_headers and message == self._messages:
            # This whole read belonged to one request's headers. httptools holds an unfinished
            # field until it ends (and only then calls on_header), so count raw reads too.
            self._chunk_bytes += len(data)
            if self._chunk_bytes > self.limits.max_header_bytes:
                self._refuse_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms the idle timer unless a pipelined request waits
        if self._reading_headers:
            self._cancel_idle()  # the next request has begun: its header timer applies instead

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._messages += 1
        self._reading_headers = True
        self._header_bytes = self._chunk_bytes = self._header_fields = 0
        if self._header_timer is None:  # the first request's timer runs from connection_made
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._count(len(url), fields=0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + _FIELD_OVERHEAD, fields=1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()

    def _count(self, size: int, fields: int) -> None:
        self._header_bytes += size
        self._header_fields += fields
        if self._header_bytes > self.limits.max_header_bytes or self._header_fields > self.limits.max_headers:
            self._headers_too_large = True
            raise HeadersTooLarge  # uvicorn's data_received then calls send_400_response

    def send_400_response(self, msg: str) -> None:
        if self._headers_too_large:
            self._refuse_headers()
        else:
            super().send_400_response(msg)

    # Answers

    def _refuse_headers(self) -> None:
        limits = self.limits
        message = f"request line and headers exceed {limits.max_header_bytes} bytes or {limits.max_headers} fields"
        self._answer(431, "headers_too_large", message)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is being handled and the next one's headers are late: close once it is
            # answered, as uvicorn's own shutdown() does.
            self.cycle.keep_alive = False
        elif self._reading_headers:
            self._answer(408, "request_timeout", f"headers not received within {self.limits.header_timeout_s:g} s")
        else:
            self.transport.close()  # nothing sent yet: idle, closed without an answer

    def _answer(self, status: int, code: str, message: str) -> None:
        """Write a JSON error with ``Connection: close``, then close the connection."""
        self._answered = True
        self._cancel_idle()
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            # Half-close: the client reads the answer, then EOF; a client that closes too
            # ends the connection at once (uvicorn's eof_received lets the transport close).
            self.transport.write_eof()
            self._linger = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    # uvicorn's keep-alive timer, used as the idle timer

    def _arm_idle(self) -> None:
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _cancel_idle(self) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None


def bounded_http_protocol(settings: HttpSettings) -> type[BoundedHttpToolsProtocol]:
    """The protocol class to give uvicorn (``http=``), bound to one server's settings:
    uvicorn builds each connection's protocol itself, so the settings ride on the class."""

    class Bound(BoundedHttpToolsProtocol):
        limits = settings

    return Bound
