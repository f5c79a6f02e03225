"""One place that renders every error as ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from batching import BatchingError
from server.api.responses import OrjsonResponse
from server.errors import HTTP_STATUS, ErrorKind, ServiceError, from_batching_error
from server.v2_codec import ProtocolError

log = logging.getLogger(__name__)

_KIND_BY_STATUS = {status: kind for kind, status in reversed(list(HTTP_STATUS.items()))}


def render(error: ServiceError) -> Response:
    return OrjsonResponse(error.body(), status_code=error.status, headers=error.headers())


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return render(exc)


async def _batching_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatchingError)
    return render(from_batching_error(exc))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return render(ServiceError(ErrorKind.INVALID_PARAMETER, problems or "invalid request"))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = _KIND_BY_STATUS.get(exc.status_code, ErrorKind.BAD_REQUEST)
    response = render(ServiceError(kind, str(exc.detail)))
    response.status_code = exc.status_code
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return render(ServiceError(ErrorKind.INTERNAL, "internal server error"))


def flat_errors(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """For the Triton/KServe v2 and TF Serving routes: their clients expect ``{"error": "..."}``."""

    @functools.wraps(handler)
    async def wrapped(*args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(*args, **kwargs)
        except ServiceError as exc:
            return OrjsonResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers())
        except ProtocolError as exc:
            return OrjsonResponse({"error": str(exc)}, status_code=400)

    return wrapped


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(BatchingError, _batching_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
