"""Admission at the door: a request that carries a body takes a slot and its body's bytes
before a byte of the body is read, and holds both until its handler (and every piece of work
the handler started) has ended.

- Content-Length over the body limit: 413 at once, the body never read.
- No slot left (``max_requests_in_progress``) or no room for the body's bytes
  (``max_body_bytes_in_flight``): 429 with Retry-After, the body never read.
- Chunked bodies reserve their bytes as they arrive and stop at the body limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_contract.errors import ErrorKind, ServiceError
from server.admission import Admission, Budget
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


@dataclass(frozen=True)
class Uploads:
    """A path whose bodies have a limit and a budget of their own (a job's many images): large
    uploads there never take the bytes that requests are admitted by."""

    max_body_bytes: int
    budget: Budget


class AdmitRequests:
    def __init__(self, app: ASGIApp, admission: Admission, uploads: dict[str, Uploads] | None = None) -> None:
        self.app = app
        self.admission = admission
        self.max_body = admission.limits.max_body_bytes
        self.uploads = uploads or {}

    @staticmethod
    def _too_large(limit: int) -> ServiceError:
        return ServiceError(ErrorKind.PAYLOAD_TOO_LARGE, f"request body exceeds {limit} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        budget = self.admission
        reserved = 0
        upload = self.uploads.get(scope["path"])
        max_body = upload.max_body_bytes if upload is not None else self.max_body
        body_bytes = upload.budget if upload is not None else budget.body_bytes
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
                body_bytes.take(declared)
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
                    body_bytes.take(received - reserved)
                    reserved = received
            return message

        try:
            await self.app(scope, admitted_receive, send)
        finally:
            body_bytes.give(reserved)
            budget.requests.give(1)
