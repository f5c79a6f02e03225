"""The work pool: a failed or cancelled request leaves no work behind, and its call returns
only once every thread still working for it has let go (so its admission covers them)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable
from functools import partial

import orjson
import pytest

from model_contract.errors import ErrorKind, ServiceError
from server.api.error_handlers import HTTP_STATUS
from server.cpu_budget import CpuAccount, CpuBudgets, current_account
from server.v2_codec import ProtocolError, TensorLimits, parse_infer_request
from server.work_pool import YIELDING_NICENESS, WorkPool
from tests.fakes import settle
from tests.helpers import until


class Jobs:
    """Calls that record that they started, and block until the test lets them finish."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.finished: list[int] = []
        self.gate = threading.Event()

    def blocking(self, i: int) -> Callable[[], int]:
        def call() -> int:
            self.started.append(i)
            if not self.gate.wait(timeout=10):
                raise TimeoutError("the test never opened the gate")
            self.finished.append(i)
            return i * 10

        return call

    def failing(self, i: int) -> Callable[[], int]:
        def call() -> int:
            self.started.append(i)
            raise ValueError(f"job {i} is bad")

        return call


def test_results_come_back_in_order() -> None:
    async def scenario() -> None:
        pool, jobs = WorkPool(threads=3), Jobs()
        jobs.gate.set()
        assert await pool.run_all([jobs.blocking(i) for i in range(8)]) == [i * 10 for i in range(8)]
        assert await pool.run(jobs.blocking(9)) == 90
        pool.shutdown()

    asyncio.run(scenario())


def test_a_failure_withdraws_queued_siblings_and_waits_for_running_ones() -> None:
    async def scenario() -> None:
        pool, jobs = WorkPool(threads=2), Jobs()
        # Thread 1 runs job 0 (blocked); thread 2 runs job 1, which fails; jobs 2-9 are queued.
        calls = [jobs.blocking(0), jobs.failing(1), *(jobs.blocking(i) for i in range(2, 10))]
        work = asyncio.ensure_future(pool.run_all(calls))
        await until(lambda: 1 in jobs.started)
        await settle()
        assert not work.done(), "returned while job 0 still ran for this request"
        jobs.gate.set()
        with pytest.raises(ValueError, match="job 1 is bad"):
            await work
        assert 0 in jobs.finished
        # At most the one job thread 2 picked up before the failure reached the loop ran.
        assert len([i for i in jobs.started if i >= 2]) <= 1
        pool.shutdown()

    asyncio.run(scenario())


def test_cancellation_withdraws_queued_work_and_waits_for_running_work() -> None:
    async def scenario() -> None:
        pool, jobs = WorkPool(threads=1), Jobs()
        work = asyncio.ensure_future(pool.run_all([jobs.blocking(i) for i in range(5)]))
        await until(lambda: jobs.started == [0])
        work.cancel()
        await settle()
        assert not work.done(), "cancelled while its thread still ran"
        jobs.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await work
        assert jobs.started == [0] and jobs.finished == [0]
        pool.shutdown()

    asyncio.run(scenario())


def test_work_of_heavy_clients_never_queues_ahead_of_other_clients_work() -> None:
    async def scenario() -> None:
        pool, jobs = WorkPool(threads=2), Jobs()
        budgets = CpuBudgets(clock=lambda: 0.0)  # no refill while the test runs
        budgets.charge("key:heavy", share=1.0, seconds=0.6)  # most of its 1 s bucket spent

        async def as_client(identity: str, calls: list[Callable[[], int | str]]) -> list[int | str]:
            current_account.set(CpuAccount(budgets, identity, share=1.0))
            return await pool.run_all(calls)

        # Two slow pieces from the heavy client: they get one thread between them (half the pool).
        heavy = asyncio.ensure_future(as_client("key:heavy", [jobs.blocking(0), jobs.blocking(1)]))
        await until(lambda: jobs.started == [0])
        await settle()
        assert jobs.started == [0]  # the second waits for the heavy clients' thread, not a shared one
        # Everybody else's work, budgeted or not, still runs at once on the shared threads.
        assert await pool.run(thread_name) == "work"
        assert await as_client("key:light", [thread_name]) == ["work"]
        jobs.gate.set()
        assert await heavy == [0, 10]
        assert await as_client("key:heavy", [thread_name]) == ["budgeted-work"]
        pool.shutdown()

    asyncio.run(scenario())


def thread_name() -> str:
    return threading.current_thread().name.rsplit("_", 1)[0]


def thread_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def big_v2_body(values: int) -> bytes:
    spec = {"name": "images", "datatype": "UINT8", "shape": [values], "data": [200] * values}
    return orjson.dumps({"inputs": [spec]})


def test_isolated_work_runs_in_another_process_and_its_result_errors_and_cpu_come_back() -> None:
    limits = TensorLimits(max_batch=10**6, max_elements=10**6, max_byte_elements=1)

    async def scenario() -> None:
        pool, budgets = WorkPool(threads=2), CpuBudgets()
        current_account.set(CpuAccount(budgets, "key:json", share=0.001))
        assert await pool.run_isolated(os.getpid) != os.getpid()
        assert await pool.run_isolated(thread_niceness) >= YIELDING_NICENESS
        parsed = await pool.run_isolated(partial(parse_infer_request, big_v2_body(500_000), None, limits))
        assert parsed.inputs[0].array.shape == (500_000,) and int(parsed.inputs[0].array[-1]) == 200
        # Parsing half a million numbers took the worker real CPU: the client now owes it.
        assert budgets.retry_after("key:json", share=0.001) is not None
        with pytest.raises(ServiceError) as refused:  # in debt: refused before it is sent
            await pool.run_isolated(os.getpid)
        assert refused.value.kind is ErrorKind.RATE_LIMITED
        current_account.set(None)
        with pytest.raises(ProtocolError) as malformed:  # a client error crosses the boundary intact
            await pool.run_isolated(partial(parse_infer_request, b"{", None, limits))
        assert HTTP_STATUS[malformed.value.kind] == 400 and "JSON" in malformed.value.message
        await asyncio.to_thread(pool.shutdown)

    asyncio.run(scenario())


def test_a_worker_that_dies_costs_one_503_and_the_next_call_gets_a_new_one() -> None:
    async def scenario() -> None:
        pool = WorkPool(threads=2)
        worker = await pool.run_isolated(os.getpid)
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(ServiceError) as refused:
            for _ in range(50):  # bounded: until the pool notices its worker is gone
                await pool.run_isolated(os.getpid)
                await asyncio.sleep(0.05)
        assert refused.value.kind is ErrorKind.UNAVAILABLE and refused.value.retry_after == 1
        assert await pool.run_isolated(os.getpid) not in (worker, os.getpid())
        await asyncio.to_thread(pool.shutdown)

    asyncio.run(scenario())


def test_a_parse_past_the_workers_memory_limit_is_413_and_the_worker_lives_on() -> None:
    async def scenario() -> None:
        pool = WorkPool(threads=2, worker_memory_bytes=1 << 30)
        worker = await pool.run_isolated(os.getpid)
        with pytest.raises(ServiceError) as refused:
            await pool.run_isolated(partial(bytearray, 2 << 30))  # 2 GiB in a 1 GiB worker
        assert HTTP_STATUS[refused.value.kind] == 413
        assert await pool.run_isolated(os.getpid) == worker
        await asyncio.to_thread(pool.shutdown)

    asyncio.run(scenario())
