"""Errors across the process boundary: the model owner raises what the in-process server
would (the batcher's errors, ``ServiceError``, a runtime's failure) and the worker re-raises
the same type, so the service maps them exactly as it does in one process."""

from __future__ import annotations

from typing import Any

from batching import BatcherClosed, BatchResultMismatch, DeadlineExceeded, Overloaded, RequestTooLarge
from model_contract.errors import ErrorKind, ServiceError


class ModelFailure(Exception):
    """The runtime raised while running this request's images (in the model owner)."""


def encode_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ServiceError):
        return {"type": "service", "kind": exc.kind.value, "message": exc.message, "retry_after": exc.retry_after}
    if isinstance(exc, Overloaded):
        return {
            "type": "overloaded",
            "retry_after": exc.retry_after,
            "queued": exc.queued,
            "capacity": exc.capacity,
            "reason": exc.reason,
        }
    if isinstance(exc, RequestTooLarge):
        return {"type": "too_large", "cost": exc.cost, "capacity": exc.capacity}
    for name, kind in _PLAIN.items():
        if type(exc) is kind:
            return {"type": name, "message": str(exc)}
    return {"type": "model", "message": f"{type(exc).__name__}: {exc}"}


_PLAIN: dict[str, type[Exception]] = {
    "deadline": DeadlineExceeded,
    "closed": BatcherClosed,
    "mismatch": BatchResultMismatch,
}


def decode_error(error: dict[str, Any]) -> Exception:
    kind = error.get("type")
    if kind == "service":
        return ServiceError(ErrorKind(error["kind"]), str(error["message"]), error.get("retry_after"))
    if kind == "overloaded":
        return Overloaded(error["retry_after"], error["queued"], error["capacity"], error["reason"])
    if kind == "too_large":
        return RequestTooLarge(error["cost"], error["capacity"])
    if kind in _PLAIN:
        return _PLAIN[kind](error.get("message", ""))
    return ModelFailure(str(error.get("message", "the model process failed")))
