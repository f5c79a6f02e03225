"""Which request a piece of work belongs to: an id per request, in every log line written while
it is handled, echoed to the client, and carried to the model process.

The id is the client's ``X-Request-ID`` (HTTP header or gRPC metadata) when it is a sane token,
else one made here: a client must not be able to write newlines, or a kilobyte, into every log
line of its request.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

HEADER = "x-request-id"
MAX_CHARS = 128
_SANE = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_CHARS}}}")

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
"""Set for the request being handled; tasks made while handling it see it too."""


def accepted_request_id(offered: str | None) -> str:
    """The client's id if it is a token of at most ``MAX_CHARS`` safe characters, else a new one."""
    if offered is not None and _SANE.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Gives every record written while a request is handled its ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = request_id.get()
        if current is not None and not hasattr(record, "request_id"):
            record.request_id = current
        return True
