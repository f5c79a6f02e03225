"""CPU work off the event loop, on a thread pool, with work that never outlives its request.

Decoding, JSON parsing and tensor conversion run here, never on the event loop. When one
part of a request fails (or the request is cancelled because its client left), the parts not
yet started are withdrawn from the pool, and the call returns only once the parts already
running have ended. So a request's admission, held by its caller, covers every thread that
still works for it, and a failed request leaves no decodes behind to delay the next one.

Work of clients that have spent most of their CPU budget (server/cpu_budget.py), and background
work (a job's images), runs on threads of its own, half as many: the budget bounds what they spend on average, and their
own threads keep one client's 0.5 s decodes from queueing ahead of everybody else's 3 ms ones.
Clients within their budget, a server-wide one included, share the main threads.

Parsing a large JSON body runs in worker processes instead (``run_isolated``). orjson and
numpy's list conversion hold the GIL for all of their work: in a thread, the 0.5 s that a
19 MB body of JSON pixels takes would be 0.5 s in which the event loop and the model's thread
crawl (measured: legitimate p99 went from 0.15 to 1 s beside a client sending such bodies).
The workers run at a lower scheduling priority (nice 10): under load their CPU goes to the
serving threads first, and they get what is left, never nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextvars import ContextVar
from typing import Any, TypeVar, cast

from model_contract.errors import ErrorKind, ServiceError
from model_contract.memory import release_freed_memory
from server.cpu_budget import charged, current_account

T = TypeVar("T")

background: ContextVar[bool] = ContextVar("background", default=False)
"""Set by work nobody waits on (a job's images): it runs on the secondary threads, so it never
queues ahead of a request's decodes on the main ones."""


class WorkPool:
    def __init__(self, threads: int, worker_memory_bytes: int | None = None) -> None:
        """``worker_memory_bytes``: the address space a parsing worker may use; past it, its
        allocation fails (413) instead of the machine running out of memory."""
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="work")
        # Not niced: a low-priority thread preempted while holding the GIL would stall the
        # serving threads behind it (measured: legitimate throughput fell 10 % more).
        self._budgeted = ThreadPoolExecutor(max_workers=max(1, threads // 2), thread_name_prefix="budgeted-work")
        self._process_count = max(1, threads // 2)
        self._worker_memory_bytes = worker_memory_bytes
        self._processes: ProcessPoolExecutor | None = None  # started on first use

    def _process_pool(self) -> ProcessPoolExecutor:
        if self._processes is None:
            # spawn, not fork: the server process holds threads and a loaded model.
            context = multiprocessing.get_context("spawn")
            self._processes = ProcessPoolExecutor(
                max_workers=self._process_count,
                mp_context=context,
                initializer=_start_worker,
                initargs=(self._worker_memory_bytes,),
            )
        return self._processes

    async def run(self, call: Callable[[], T]) -> T:
        (result,) = await self.run_all([call])
        return result

    def run_here(self, call: Callable[[], T]) -> T:
        """A call too small to be worth a thread, on the caller's thread; charged like the rest."""
        account = current_account.get()
        return charged(call, account)() if account is not None else call()

    async def run_all(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Every call's result in order, or the first failure once none of them still runs.
        The CPU each call takes is charged to the request's client, when it has a budget."""
        executor, account = self._executor, current_account.get()
        if account is not None:
            calls = [charged(call, account) for call in calls]
            if account.heavy():
                executor = self._budgeted
        if background.get():
            executor = self._budgeted
        return await _gather([executor.submit(call) for call in calls])

    async def run_isolated(self, call: Callable[[], T]) -> T:
        """``call`` (picklable: a module-level function or a partial of one) in a worker
        process, its CPU time charged to the request's client as in a thread."""
        account = current_account.get()
        if account is not None:
            account.check()
        try:
            (outcome,) = await _gather([self._process_pool().submit(_measured, call)])
        except BrokenProcessPool as exc:
            # A worker died (killed, or out of memory past its limit). The pool cannot be
            # used again: the next call starts a new one.
            self._processes = None
            raise ServiceError(ErrorKind.UNAVAILABLE, "a parsing worker stopped; retry", retry_after=1) from exc
        result, error, cpu_seconds = outcome
        if account is not None:
            account.charge(cpu_seconds)
        if error is not None:
            raise error
        return cast(T, result)

    def shutdown(self) -> None:
        """Blocking: withdraw queued work and wait for running calls. Call it off the loop."""
        for executor in (self._budgeted, self._executor, self._processes):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)


YIELDING_NICENESS = 10


def _start_worker(memory_bytes: int | None) -> None:
    """In a new parsing worker: a lower scheduling priority, and a cap on its address space.
    Where the platform offers neither, the worker runs without them."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, 0, YIELDING_NICENESS)
    if memory_bytes is not None:
        with contextlib.suppress(ImportError, ValueError, OSError):
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _measured(call: Callable[[], T]) -> tuple[T | None, BaseException | None, float]:
    """In the worker process: the result or the error, and the CPU time it took. What the
    work allocated (a large body's parse: hundreds of MB) goes back to the OS at once."""
    started = time.process_time()
    try:
        return call(), None, time.process_time() - started
    except MemoryError:
        error = ServiceError(ErrorKind.PAYLOAD_TOO_LARGE, "the body needs more memory to parse than is allowed")
        return None, error, time.process_time() - started
    except Exception as exc:
        return None, exc, time.process_time() - started
    finally:
        release_freed_memory()


async def _gather(futures: list[Future[T]]) -> list[T]:
    """Every future's result in order, or the first failure once none of them still runs."""
    waiters = [asyncio.wrap_future(f) for f in futures]
    for waiter in waiters:
        waiter.add_done_callback(_consume)
    try:
        return list(await asyncio.gather(*waiters))
    finally:
        if not all(f.done() for f in futures):
            await _withdraw(futures)


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
