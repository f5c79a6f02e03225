"""Admission at the door: a request that carries a body takes a slot and its body's bytes
before a byte of the body is read, and holds both until its handler (and every piece of work
the handler started) has ended.

- Content-Length over the body limit: 413 at once, the body never read.
- No slot left (``max_requests_in_progress``) or no room for the body's bytes
  (``max_body_bytes_in_flight``): 429 with Retry-After, the body never read.
- Chunked bodies reserve their bytes as they arrive and stop at the body limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_contract.errors import ErrorKind, ServiceError
from server.admission import Admission
from server.api.error_handlers import refuse

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            # int() would also take " 12", "+12" and "1_2"; HTTP allows digits only.
            if not value.isdigit() or len(value) > 18:
                raise ServiceError(ErrorKind.BAD_REQUEST, "Content-Length is not a number of bytes")
            return int(value)
    return None


class AdmitRequests:
    def __init__(self, app: ASGIApp, admission: Admission, larger_bodies: dict[str, int] | None = None) -> None:
        """``larger_bodies``: paths whose body limit is not the server's (a job's many images)."""
        self.app = app
        self.admission = admission
        self.max_body = admission.limits.max_body_bytes
        self.larger_bodies = larger_bodies or {}

    @staticmethod
    def _too_large(limit: int) -> ServiceError:
        return ServiceError(ErrorKind.PAYLOAD_TOO_LARGE, f"request body exceeds {limit} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        budget = self.admission
        reserved = 0
        max_body = self.larger_bodies.get(scope["path"], self.max_body)
        try:
            declared = declared_length(scope)
            if declared is not None and declared > max_body:
                raise self._too_large(max_body)
            budget.requests.take(1)
        except ServiceError as error:
            await refuse(error, scope, receive, send)
            return
        try:
            if declared:
                budget.body_bytes.take(declared)
                reserved = declared
        except ServiceError as error:
            budget.requests.give(1)
            await refuse(error, scope, receive, send)
            return

        received = 0

        async def admitted_receive() -> Message:
            nonlocal received, reserved
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise self._too_large(max_body)
                if received > reserved:  # chunked: no length was declared up front
                    budget.body_bytes.take(received - reserved)
                    reserved = received
            return message

        try:
            await self.app(scope, admitted_receive, send)
        finally:
            budget.body_bytes.give(reserved)
            budget.requests.give(1)
