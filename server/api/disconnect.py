"""Stop working for a client that has gone away.

uvicorn does not cancel a handler when its client disconnects. Without this, a request
whose caller gave up would still be decoded, queued and run on the model. With it, the work
is cancelled, and the batcher drops the cancelled item before it reaches the accelerator.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from model_contract.errors import ErrorKind, ServiceError

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first. Call it only once
    the request body has been read."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ServiceError(ErrorKind.CLIENT_CLOSED_REQUEST, "the client closed the connection")
    return task.result()
