"""BodyDeadline alone: a fake ASGI app and a receive the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from starlette.types import Message, Receive, Scope, Send

from model_contract.errors import ErrorKind, ServiceError
from server.api.body_deadline import BodyDeadline
from server.api.error_handlers import HTTP_STATUS

SCOPE: Scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": []}


def _receive(messages: list[Message]) -> Receive:
    """Hand out ``messages`` in order, then wait for ever (a client that sends nothing more)."""

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


async def _send(message: Message) -> None:
    raise AssertionError("the app under test sends nothing")


def _run(app: Callable[[Scope, Receive, Send], Awaitable[None]], messages: list[Message], timeout_s: float) -> None:
    asyncio.run(BodyDeadline(app, timeout_s)(SCOPE, _receive(messages), _send))


def test_a_body_that_stops_half_way_raises_request_timeout() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["body"] == b"half"
        await receive()

    with pytest.raises(ServiceError) as caught:
        _run(app, [{"type": "http.request", "body": b"half", "more_body": True}], timeout_s=0.05)
    assert caught.value.kind is ErrorKind.REQUEST_TIMEOUT and HTTP_STATUS[caught.value.kind] == 408


@pytest.mark.parametrize(
    "last", [{"type": "http.request", "body": b"all", "more_body": False}, {"type": "http.disconnect"}]
)
def test_after_the_last_message_receive_has_no_deadline(last: Message) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.sleep(0.1)  # past the deadline
        # As the disconnect watcher does: wait on receive for as long as the work takes.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(receive(), 0.2)

    _run(app, [last], timeout_s=0.05)


def test_other_scopes_pass_through() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.1)
        assert (await receive())["type"] == "lifespan.startup"

    asyncio.run(BodyDeadline(app, 0.01)({"type": "lifespan"}, _receive([{"type": "lifespan.startup"}]), _send))
