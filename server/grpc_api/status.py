"""Domain errors as gRPC status codes: one table, as ``HTTP_STATUS`` is for HTTP.

- The client's mistakes (malformed input, an image or request over a limit) are
  INVALID_ARGUMENT: no retry can help. gRPC's own message size limit answers RESOURCE_EXHAUSTED
  before imgserve sees the message; that one carries no retry hint either.
- Overload, warm-up, a restarting model process and a draining server are UNAVAILABLE, and a
  client's rate limit or CPU budget RESOURCE_EXHAUSTED; each with a retry hint in the trailing
  metadata: ``retry-after`` (seconds, as HTTP's header) and ``grpc-retry-pushback-ms`` (what
  gRPC's own retry policy reads).
- A deadline that passed before the model ran is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import math

import grpc

from model_contract.errors import ErrorKind, ServiceError

GRPC_STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.EMPTY_BODY: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.MISSING_FILE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.INVALID_IMAGE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNSUPPORTED_IMAGE_FORMAT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNSUPPORTED_MEDIA_TYPE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.IMAGE_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.PAYLOAD_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.TOO_MANY_IMAGES: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.INVALID_PARAMETER: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.INVALID_HOST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.METHOD_NOT_ALLOWED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorKind.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.REQUEST_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.OVERLOADED: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.NOT_READY: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.CLIENT_CLOSED_REQUEST: grpc.StatusCode.CANCELLED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

Metadata = tuple[tuple[str, str], ...]


def retry_hint(error: ServiceError) -> Metadata:
    """When the same call may succeed, as trailing metadata; nothing for the client's mistakes."""
    if error.retry_after is None:
        return ()
    # Whole seconds, as HTTP's Retry-After; never "retry at once".
    seconds = max(1, math.ceil(error.retry_after))
    return (("retry-after", str(seconds)), ("grpc-retry-pushback-ms", str(seconds * 1000)))


def rate_limit_metadata(fields: dict[str, str]) -> Metadata:
    """The IETF RateLimit fields (``RateLimit-Remaining``...) as metadata keys, lower case."""
    return tuple((name.lower(), value) for name, value in fields.items())
