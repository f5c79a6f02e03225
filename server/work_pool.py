"""CPU work off the event loop, on a thread pool, with work that never outlives its request.

Decoding, JSON parsing and tensor conversion run here, never on the event loop. When one
part of a request fails (or the request is cancelled because its client left), the parts not
yet started are withdrawn from the pool, and the call returns only once the parts already
running have ended. So a request's admission, held by its caller, covers every thread that
still works for it, and a failed request leaves no decodes behind to delay the next one.

Work of clients held to a CPU budget (server/cpu_budget.py) runs on threads of its own, half
as many: their budget bounds what they spend on average, and their own threads keep one
client's 0.5 s decode from queueing ahead of everybody else's 3 ms ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from server.cpu_budget import charged, current_account

T = TypeVar("T")


class WorkPool:
    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="work")
        self._budgeted = ThreadPoolExecutor(max_workers=max(1, threads // 2), thread_name_prefix="budgeted-work")

    async def run(self, call: Callable[[], T]) -> T:
        (result,) = await self.run_all([call])
        return result

    async def run_all(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Every call's result in order, or the first failure once none of them still runs.
        The CPU each call takes is charged to the request's client, when it has a budget."""
        executor, account = self._executor, current_account.get()
        if account is not None:
            executor, calls = self._budgeted, [charged(call, account) for call in calls]
        futures = [executor.submit(call) for call in calls]
        waiters = [asyncio.wrap_future(f) for f in futures]
        for waiter in waiters:
            waiter.add_done_callback(_consume)
        try:
            return list(await asyncio.gather(*waiters))
        finally:
            if not all(f.done() for f in futures):
                await _withdraw(futures)

    def shutdown(self) -> None:
        """Blocking: withdraw queued work and wait for running calls. Call it off the loop."""
        for executor in (self._budgeted, self._executor):
            executor.shutdown(wait=True, cancel_futures=True)


def _consume(waiter: asyncio.Future[Any]) -> None:
    """Mark a late failure as seen: once a sibling has failed, nobody awaits this one."""
    if not waiter.cancelled():
        waiter.exception()


async def _withdraw(futures: list[Future[T]]) -> None:
    """Cancel what has not started; wait, even while being cancelled, for what has."""
    for future in futures:
        future.cancel()
    running = [f for f in futures if not f.done()]
    if not running:
        return
    waiting = asyncio.get_running_loop().run_in_executor(None, wait, running)
    cancelled = False
    while not waiting.done():
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError  # the caller's cancellation stands, now that its threads are done
