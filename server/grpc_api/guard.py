"""What every gRPC call goes through, whatever its service: access (``server.gatekeeper``, as
HTTP's middleware), the client's CPU account for the call's work, errors as status codes with
retry hints (``status.py``), and the call's metrics.

Handlers take the request message as bytes and parse it here, so a message that does not parse
is INVALID_ARGUMENT (gRPC's own deserializer would answer INTERNAL)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from batching import BatchingError
from model_contract.errors import ErrorKind, ServiceError
from server.access_log import log_grpc
from server.cpu_budget import current_account
from server.errors import from_batching_error
from server.gatekeeper import Access, Gatekeeper, Refused, bearer_or_key, client_identity
from server.grpc_api.status import GRPC_STATUS, Metadata, rate_limit_metadata, retry_hint
from server.metrics import Metrics
from server.request_context import HEADER, accepted_request_id, request_id
from server.tracing import Tracing

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)


class Context(Protocol):
    """What imgserve uses of ``grpc.aio.ServicerContext`` (typed here: grpc ships no stubs)."""

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None: ...

    def peer(self) -> str: ...

    def time_remaining(self) -> float | None: ...

    def cancelled(self) -> bool: ...

    async def write(self, message: Any) -> None: ...

    def code(self) -> grpc.StatusCode | None: ...

    def set_trailing_metadata(self, trailing_metadata: Metadata) -> None: ...

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()) -> NoReturn: ...


Handler = Callable[[Any, Context], Awaitable[Any]]


def _metadata(context: Context, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value
    return None


def credential_of(context: Context) -> str | None:
    """``authorization: Bearer <x>`` or ``x-api-key: <x>``, as over HTTP."""
    return bearer_or_key(_metadata(context, "authorization"), _metadata(context, "x-api-key"))


def address_of(context: Context) -> str | None:
    """The client's address from gRPC's peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``)."""
    scheme, _, rest = context.peer().partition(":")
    if scheme not in ("ipv4", "ipv6") or not rest:
        return None
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]") or None


def parsed(message_type: type[Req], data: bytes) -> Req:
    try:
        message: Req = message_type.FromString(data)
    except DecodeError:
        raise ServiceError(ErrorKind.BAD_REQUEST, f"the message is not a {message_type.__name__}") from None
    return message


class Guard:
    def __init__(
        self, gatekeeper: Gatekeeper, metrics: Metrics, *, access_log: bool = False, tracing: Tracing | None = None
    ) -> None:
        self._gatekeeper = gatekeeper
        self._metrics = metrics
        self._access_log = access_log
        self._tracing = tracing or Tracing()

    def wrap(self, method: str, access: Access, handler: Handler) -> Handler:
        """``handler`` behind the door: admitted, charged, its errors rendered, counted."""
        calls, seconds = self._metrics.grpc_requests, self._metrics.grpc_request_seconds.labels(method)

        async def guarded(request: Any, context: Context) -> Any:
            started, code = time.perf_counter(), grpc.StatusCode.OK
            rid = accepted_request_id(_metadata(context, HEADER))
            id_token = request_id.set(rid)
            metadata: Metadata = ((HEADER, rid),)
            try:
                try:
                    admitted = self._gatekeeper.admit(access, credential_of(context), address_of(context))
                    metadata += rate_limit_metadata(admitted.rate_limit)
                    context.set_trailing_metadata(metadata)
                    token, who = current_account.set(admitted.account), client_identity.set(admitted.identity)
                    try:
                        if not self._tracing.enabled:
                            return await handler(request, context)
                        carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
                        with self._tracing.request(method, carrier, {"rpc.system": "grpc", "rpc.method": method}):
                            return await handler(request, context)
                    finally:
                        client_identity.reset(who)
                        current_account.reset(token)
                except Refused as refused:
                    metadata += rate_limit_metadata(refused.rate_limit)
                    raise refused.error from None
                except BatchingError as exc:
                    raise from_batching_error(exc) from exc
            except ServiceError as error:
                # Not logged, as over HTTP: a client must not be able to write a log line per call.
                code = GRPC_STATUS[error.kind]
                await context.abort(code, error.message, metadata + retry_hint(error))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # a handler (health's) aborted itself
                raise
            except Exception:
                log.exception("unhandled error in gRPC %s", method)
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, "internal server error", metadata)
            finally:
                elapsed = time.perf_counter() - started
                calls.labels(method, code.name).inc()
                seconds.observe(elapsed)
                if self._access_log:
                    log_grpc(method, code.name, elapsed, address_of(context))
                request_id.reset(id_token)

        return guarded
