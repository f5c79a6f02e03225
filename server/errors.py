"""The batcher's errors as the service's: one mapping, so every protocol reports them alike."""

from __future__ import annotations

from batching import BatcherClosed, BatchingError, DeadlineExceeded, Overloaded, RequestTooLarge
from model_contract.errors import ErrorKind, ServiceError


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
