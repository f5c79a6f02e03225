"""One place that renders every error, in the shape of the protocol the client speaks.

imgserve's own routes answer ``{"error": {"code", "message"}}``; the Open Inference Protocol v2
and TensorFlow Serving routes answer ``{"error": "..."}``, as Triton and TF Serving do. The
shape follows from the path alone, so middleware that refuses a request before routing (body
limits, access control, admission) answers in the same shape as the route would have.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from batching import BatchingError
from server.api.responses import OrjsonResponse
from server.errors import HTTP_STATUS, ErrorKind, ServiceError, echo, from_batching_error

log = logging.getLogger(__name__)

_KIND_BY_STATUS = {status: kind for kind, status in reversed(list(HTTP_STATUS.items()))}
# The connection is closed after these: the rest of the request may still be on its way.
_CLOSE_AFTER = frozenset({ErrorKind.PAYLOAD_TOO_LARGE, ErrorKind.REQUEST_TIMEOUT})


def speaks_flat_errors(path: str) -> bool:
    """True for v2 and TF Serving paths. TF Serving lives under ``/v1/models/`` beside imgserve's
    own ``/v1/models`` list and ``/v1/models/{name}/classify``."""
    if path.startswith("/v2/") or path == "/v2":
        return True
    return path.startswith("/v1/models/") and not path.endswith("/classify")


def render(error: ServiceError, path: str, headers: dict[str, str] | None = None) -> Response:
    body: object = {"error": error.message} if speaks_flat_errors(path) else error.body()
    all_headers = {**error.headers(), **(headers or {})}
    if error.kind is ErrorKind.UNAUTHORIZED:
        all_headers["WWW-Authenticate"] = "Bearer"
    if error.kind in _CLOSE_AFTER:
        all_headers["Connection"] = "close"
    return OrjsonResponse(body, status_code=error.status, headers=all_headers)


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
