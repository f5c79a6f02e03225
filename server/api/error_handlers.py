"""One place that turns domain errors into HTTP, in the shape of the protocol the client speaks.

``HTTP_STATUS`` is the one table from error kinds to status codes. Two renderers give the body:
imgserve's own routes answer ``{"error": {"code", "message"}}``; the Open Inference Protocol v2
and TensorFlow Serving routes answer ``{"error": "..."}``, as Triton and TF Serving do. Which
one follows from the path alone, so middleware that refuses a request before routing (body
limits, access control, admission) answers in the same shape as the route would have.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from batching import BatchingError
from model_contract.errors import ErrorKind, ServiceError, echo
from server.api.responses import OrjsonResponse
from server.errors import from_batching_error

log = logging.getLogger(__name__)

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

ErrorBody = Callable[[ServiceError], object]


def imgserve_body(error: ServiceError) -> dict[str, dict[str, str]]:
    """imgserve's own shape: a stable code to branch on, and a message for people."""
    return {"error": {"code": error.kind.value, "message": error.message}}


def flat_body(error: ServiceError) -> dict[str, str]:
    """The Open Inference Protocol's and TF Serving's shape."""
    return {"error": error.message}


def retry_after(error: ServiceError) -> dict[str, str]:
    if error.retry_after is None:
        return {}
    # Retry-After takes whole seconds; never tell a client to retry at once.
    return {"Retry-After": str(max(1, math.ceil(error.retry_after)))}


_KIND_BY_STATUS = {status: kind for kind, status in reversed(list(HTTP_STATUS.items()))}
# The connection is closed after these: the rest of the request may still be on its way.
_CLOSE_AFTER = frozenset({ErrorKind.PAYLOAD_TOO_LARGE, ErrorKind.REQUEST_TIMEOUT})


def speaks_flat_errors(path: str) -> bool:
    """True for v2 and TF Serving paths. TF Serving lives under ``/v1/models/`` beside imgserve's
    own ``/v1/models`` list and ``/v1/models/{name}/classify``."""
    if path.startswith("/v2/") or path == "/v2":
        return True
    return path.startswith("/v1/models/") and not path.endswith("/classify")


def body_for(path: str) -> ErrorBody:
    """The renderer of the protocol served at ``path``."""
    return flat_body if speaks_flat_errors(path) else imgserve_body


def render(error: ServiceError, path: str, headers: dict[str, str] | None = None) -> Response:
    all_headers = {**retry_after(error), **(headers or {})}
    if error.kind is ErrorKind.UNAUTHORIZED:
        all_headers["WWW-Authenticate"] = "Bearer"
    if error.kind in _CLOSE_AFTER:
        all_headers["Connection"] = "close"
    return OrjsonResponse(body_for(path)(error), status_code=HTTP_STATUS[error.kind], headers=all_headers)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if (name == b"content-length" and value not in (b"0", b"")) or name == b"transfer-encoding":
            return True
    return False


async def refuse(
    error: ServiceError, scope: Scope, receive: Receive, send: Send, headers: dict[str, str] | None = None
) -> None:
    """Answer a request refused before its body was read. The connection is closed after a
    body that is still on its way: draining it would cost what the refusal was meant to save."""
    extra = {**(headers or {}), **({"Connection": "close"} if _has_body(scope) else {})}
    await render(error, scope["path"], extra)(scope, receive, send)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    # Not logged: these are the service's answers (a failing model logs where it fails), and a
    # client must not be able to write a log line per request (a 1e-300 ms deadline is a 504).
    return render(exc, request.url.path)


async def _batching_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatchingError)
    return render(from_batching_error(exc), request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:3])
    if len(errors) > 3:
        problems += f"; and {len(errors) - 3} more"
    return render(ServiceError(ErrorKind.INVALID_PARAMETER, problems or "invalid request"), request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = _KIND_BY_STATUS.get(exc.status_code, ErrorKind.BAD_REQUEST)
    response = render(ServiceError(kind, str(exc.detail)), request.url.path)
    response.status_code = exc.status_code
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, echo(request.url.path), exc_info=exc)
    return render(ServiceError(ErrorKind.INTERNAL, "internal server error"), request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(BatchingError, _batching_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
