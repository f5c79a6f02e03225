"""Every gRPC method is served client-streaming, though a client calls it unary (the two look
the same on the wire): so a call is admitted (access, rate limit, budgets) **before** its message
is read, and a refused one never makes the server hold its message. A handler reads the one
message when it needs it, within the body timeout; a method that needs none never reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from model_contract.errors import ErrorKind, ServiceError
from server.grpc_api.guard import Context

CANCEL_NOTICE_S = 0.05
"""How long a call whose stream ended with no message is given to turn out cancelled."""

Messages = AsyncIterator[bytes]
Unary = Callable[[bytes, Context], Awaitable[Any]]
"""A method's handler, given the call's one message (its bytes)."""


async def read_one(requests: Messages, context: Context, timeout_s: float, what: str) -> bytes:
    """The call's one message, and its end: a second message is refused, as HTTP refuses data
    left over after the request. A unary client ends the stream with its message."""

    async def one_then_end() -> bytes:
        try:
            message = await anext(requests)
        except StopAsyncIteration:
            # A cancel or a deadline ends the stream too, a moment before gRPC says so.
            await asyncio.sleep(CANCEL_NOTICE_S)
            raise _ended_early(context, what) from None
        try:
            await anext(requests)
        except StopAsyncIteration:
            return message
        raise ServiceError(ErrorKind.BAD_REQUEST, f"a call carries one {what}, not more")

    try:
        return await asyncio.wait_for(one_then_end(), timeout_s)
    except asyncio.TimeoutError:
        raise ServiceError(ErrorKind.REQUEST_TIMEOUT, f"the request did not arrive within {timeout_s:g} s") from None


def _ended_early(context: Context, what: str) -> ServiceError:
    """Why a call's stream ended before its message: gRPC ends it the same way when the client
    cancels, when the deadline passes, and when the client sent nothing."""
    if context.cancelled():
        return ServiceError(ErrorKind.CLIENT_CLOSED_REQUEST, "the client cancelled the call")
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return ServiceError(ErrorKind.TIMEOUT, "the call's deadline passed before its message arrived")
    return ServiceError(ErrorKind.EMPTY_BODY, f"the call carried no {what}")


def reading(handler: Unary, timeout_s: float, what: str) -> Callable[[Messages, Context], Awaitable[Any]]:
    """``handler`` behind a read of the call's one message (once the guard has admitted it)."""

    async def read_then_handle(requests: Messages, context: Context) -> Any:
        return await handler(await read_one(requests, context, timeout_s, what), context)

    return read_then_handle


def ignoring(handler: Unary) -> Callable[[Messages, Context], Awaitable[Any]]:
    """``handler`` for a method whose message says nothing (ServerLive): it is never read."""

    async def handle(requests: Messages, context: Context) -> Any:
        return await handler(b"", context)

    return handle
