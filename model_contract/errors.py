"""Domain errors: a kind, a message and an optional retry-after. No HTTP in here.

Services raise ``ServiceError`` with a kind; each protocol's renderer (``server/api/error_handlers.py``)
decides what status and body that kind becomes on the wire.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class ErrorKind(str, Enum):
    BAD_REQUEST = "bad_request"
    EMPTY_BODY = "empty_body"
    MISSING_FILE = "missing_file"
    INVALID_IMAGE = "invalid_image"
    UNSUPPORTED_IMAGE_FORMAT = "unsupported_image_format"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    IMAGE_TOO_LARGE = "image_too_large"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    TOO_MANY_IMAGES = "too_many_images"
    INVALID_PARAMETER = "invalid_parameter"
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    INVALID_HOST = "invalid_host"
    REQUEST_TIMEOUT = "request_timeout"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    NOT_READY = "not_ready"
    UNAVAILABLE = "unavailable"
    SHUTTING_DOWN = "shutting_down"
    TIMEOUT = "timeout"
    CLIENT_CLOSED_REQUEST = "client_closed_request"
    INTERNAL = "internal"


# An error message must never grow with the request: messages are capped, and a client's own
# value appears in one only through ``echo``.
MAX_MESSAGE_CHARS = 400
MAX_ECHO_CHARS = 100


def echo(value: Any) -> str:
    """A client-supplied value, quoted for a message and cut to ``MAX_ECHO_CHARS``."""
    text = repr(value)
    return text if len(text) <= MAX_ECHO_CHARS else text[: MAX_ECHO_CHARS - 3] + "..."


def _capped(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 3] + "..."


class ServiceError(Exception):
    """A request's failure as the service sees it. ``retry_after`` (seconds) says when the
    same request may succeed: set for overload and warm-up, never for the client's mistakes."""

    def __init__(self, kind: ErrorKind, message: str, retry_after: float | None = None) -> None:
        message = _capped(message)
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in parsing worker processes too: it must cross a process boundary whole.
        return (type(self), (self.kind, self.message, self.retry_after))
