"""Error kinds, and the one table that maps them (and the batcher's errors) to HTTP.

Services raise ``ServiceError`` with a kind; they never pick a status code. Every error
response has the body ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

from batching import BatcherClosed, BatchingError, DeadlineExceeded, Overloaded, RequestTooLarge


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


HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.EMPTY_BODY: 400,
    ErrorKind.MISSING_FILE: 400,
    ErrorKind.INVALID_IMAGE: 400,
    ErrorKind.UNSUPPORTED_IMAGE_FORMAT: 415,
    ErrorKind.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorKind.IMAGE_TOO_LARGE: 413,
    ErrorKind.PAYLOAD_TOO_LARGE: 413,
    ErrorKind.TOO_MANY_IMAGES: 413,
    ErrorKind.INVALID_PARAMETER: 422,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.MODEL_NOT_FOUND: 404,
    ErrorKind.METHOD_NOT_ALLOWED: 405,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.INVALID_HOST: 400,
    ErrorKind.REQUEST_TIMEOUT: 408,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.NOT_READY: 503,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.SHUTTING_DOWN: 503,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.CLIENT_CLOSED_REQUEST: 499,  # nobody reads it; it labels the metrics
    ErrorKind.INTERNAL: 500,
}


# An error body must never grow with the request: messages are capped, and a client's own
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
    def __init__(self, kind: ErrorKind, message: str, retry_after: float | None = None) -> None:
        message = _capped(message)
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in parsing worker processes too: it must cross a process boundary whole.
        return (type(self), (self.kind, self.message, self.retry_after))

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.kind]

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.kind.value, "message": self.message}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        # Retry-After takes whole seconds; never tell a client to retry at once.
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


def from_batching_error(exc: BatchingError) -> ServiceError:
    if isinstance(exc, Overloaded):
        return ServiceError(ErrorKind.OVERLOADED, f"server overloaded: {exc.reason}", exc.retry_after)
    if isinstance(exc, RequestTooLarge):
        return ServiceError(ErrorKind.TOO_MANY_IMAGES, f"{exc.cost} images exceed the model's queue of {exc.capacity}")
    if isinstance(exc, DeadlineExceeded):
        return ServiceError(ErrorKind.TIMEOUT, "the request's deadline passed before the model could run it")
    if isinstance(exc, BatcherClosed):
        return ServiceError(ErrorKind.SHUTTING_DOWN, "the server is shutting down", retry_after=1)
    return ServiceError(ErrorKind.INTERNAL, "batch execution failed")
