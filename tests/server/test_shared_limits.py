"""Limits shared by worker processes (server/shared_limits.py, server/shared_rate_limit.py):
across real spawned processes, a budget and a rate limit hold for all workers together, a
worker killed with SIGKILL leaks nothing past ``forget_worker``, and the shared memory lives
until ``unlink``; the table's logic (eviction, a full table, the library's arithmetic) in one
process."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_contract.errors import ErrorKind, ServiceError
from server.rate_limit import LocalWindows, RateLimiter
from server.settings import LimitSettings
from server.shared_limits import Guard, SharedLimits, repair
from server.shared_rate_limit import SLOT_WORDS, SharedWindows, WindowTable

SPAWN = multiprocessing.get_context("spawn")
REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0  # a spawned child imports the server: seconds on a busy machine


@contextmanager
def shared_limits(workers: int, lock_timeout_s: float = 0.25, **limits: Any) -> Iterator[SharedLimits]:
    shared = SharedLimits.create(workers, LimitSettings(**limits), lock_timeout_s=lock_timeout_s)
    try:
        yield shared
    finally:
        shared.close()
        shared.unlink()


@contextmanager
def children(
    target: Callable[..., None], *arguments: tuple[Any, ...]
) -> Iterator[list[tuple[BaseProcess, Connection]]]:
    """One spawned child per argument tuple, each with a pipe (passed last); every one is
    killed if still alive and joined, by its handle, whatever the test did."""
    started: list[tuple[BaseProcess, Connection]] = []
    try:
        for args in arguments:
            ours, theirs = SPAWN.Pipe()
            process = SPAWN.Process(target=target, args=(*args, theirs), daemon=True)
            process.start()
            theirs.close()
            started.append((process, ours))
        yield started
    finally:
        for process, connection in started:
            if process.is_alive():
                process.kill()
            process.join(WAIT_S)
            connection.close()


def receive(connection: Connection) -> Any:
    """The child's next message; a child that died without one fails the test at once."""
    deadline = time.monotonic() + WAIT_S
    while not connection.poll(0.1):
        assert time.monotonic() < deadline, "the child did not answer in time"
    try:
        return connection.recv()
    except EOFError:
        pytest.fail("the child died (its traceback is on stderr)")


def refusal(error: ServiceError) -> tuple[ErrorKind, float | None, str]:
    return error.kind, error.retry_after, error.message


def shm_exists(shared: SharedLimits) -> bool:
    return (Path("/dev/shm") / shared.name).exists()


# What the children run: module level, so that spawn can import them.


def take_all(shared: SharedLimits, worker: int, go: Any, connection: Connection) -> None:
    """Take one request slot at a time until refused; give them back when told."""
    admission = shared.admission(worker)
    connection.send("ready")
    go.wait(WAIT_S)
    taken = 0
    while True:
        try:
            admission.requests.take(1)
        except ServiceError as error:
            connection.send((taken, refusal(error)))
            break
        taken += 1
    if connection.recv() == "give":
        admission.requests.give(taken)
        connection.send("given")
    connection.recv()  # exit


def churn(shared: SharedLimits, worker: int, seed: int, go: Any, connection: Connection) -> None:
    """Random takes and gives of images, each checking the total while it holds."""
    admission = shared.admission(worker)
    rng = random.Random(seed)
    connection.send("ready")
    go.wait(WAIT_S)
    most, admitted, refused = 0, 0, 0
    deadline = time.monotonic() + 0.5  # long enough for both to be running at once
    while time.monotonic() < deadline:
        try:
            with admission.images.held(rng.randint(1, 3)):
                admitted += 1
                most = max(most, admission.images.in_use)
        except ServiceError as error:
            assert error.kind is ErrorKind.OVERLOADED
            refused += 1
    connection.send((most, admitted, refused))


def hold_and_wait(shared: SharedLimits, worker: int, connection: Connection) -> None:
    admission = shared.admission(worker)
    admission.requests.take(3)
    admission.body_bytes.take(1000)
    admission.images.take(8)
    connection.send("held")
    connection.poll(WAIT_S)  # until killed


def take_and_give_forever(shared: SharedLimits, worker: int, connection: Connection) -> None:
    """Takes, gives and rate-limit hits as fast as it can: killed at a random point, often inside
    a lock."""
    admission = shared.admission(worker)
    limiter = shared.rate_limiter(worker, "1000000/second")
    connection.send("running")
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for _ in range(1000):
            with admission.requests.held(1):
                limiter.hit("address:10.0.0.1")


def die_inside_the_rate_lock(shared: SharedLimits, worker: int, connection: Connection) -> None:
    """Hits with a clock that never returns: the table's clock is read under its lock."""

    def clock() -> float:
        connection.send("inside")
        time.sleep(WAIT_S)  # until killed
        return time.monotonic()

    shared.rate_limiter(worker, "5/second", clock).hit("address:10.0.0.3")


def hit_on_command(shared: SharedLimits, worker: int, connection: Connection) -> None:
    """For each identity received: five hits of "5/second" at once, and the window numbers
    (on the table's clock) of the first and last."""
    limiter = shared.rate_limiter(worker, "5/second")
    while (identity := connection.recv()) is not None:
        first = int(time.monotonic() * 1000) // 1000
        states = [limiter.hit(identity) for _ in range(5)]
        last = int(time.monotonic() * 1000) // 1000
        connection.send(([(s.allowed, s.remaining, s.reset_s, s.headers()) for s in states if s], first, last))


def take_one_and_exit(shared: SharedLimits, worker: int) -> None:
    shared.admission(worker).requests.take(1)


# Across processes.


def test_two_processes_together_admit_exactly_the_capacity_then_429_and_a_give_frees_for_the_other() -> None:
    with shared_limits(3, max_requests_in_progress=7) as shared:
        go = SPAWN.Event()
        with children(take_all, (shared, 0, go), (shared, 1, go)) as started:
            assert [receive(connection) for _, connection in started] == ["ready", "ready"]
            go.set()
            results = [receive(connection) for _, connection in started]
            assert sum(taken for taken, _ in results) == 7
            for _, refused in results:
                assert refused == (ErrorKind.OVERLOADED, 1.0, "server overloaded: requests in progress at 7 of 7")

            ours = shared.admission(2)
            with pytest.raises(ServiceError) as refused_here:
                ours.requests.take(1)
            assert refusal(refused_here.value)[:2] == (ErrorKind.OVERLOADED, 1.0)

            giver = next(i for i, (taken, _) in enumerate(results) if taken)
            started[giver][1].send("give")
            assert receive(started[giver][1]) == "given"
            ours.requests.take(results[giver][0])
            assert ours.requests.in_use == 7
            for _, connection in started:
                connection.send("exit")


def test_random_takes_and_gives_from_two_processes_never_exceed_the_capacity() -> None:
    with shared_limits(2, max_images_in_progress=4, max_images_per_request=4) as shared:
        go = SPAWN.Event()
        with children(churn, (shared, 0, 1, go), (shared, 1, 2, go)) as started:
            assert [receive(connection) for _, connection in started] == ["ready", "ready"]
            go.set()
            results = [receive(connection) for _, connection in started]
        assert all(most <= 4 for most, _, _ in results)
        assert all(admitted > 0 for _, admitted, _ in results)
        assert sum(refused for _, _, refused in results) > 0  # they did compete
        assert shared.admission(0).images.in_use == 0


def test_a_worker_killed_while_holding_budget_leaks_it_until_forget_worker() -> None:
    with shared_limits(2, max_requests_in_progress=4, max_body_bytes=1000, max_body_bytes_in_flight=1000) as shared:
        with children(hold_and_wait, (shared, 1)) as [(process, connection)]:
            assert receive(connection) == "held"
            os.kill(process.pid or 0, signal.SIGKILL)
            process.join(WAIT_S)
            assert process.exitcode == -signal.SIGKILL
        assert shm_exists(shared)
        ours = shared.admission(0)
        with pytest.raises(ServiceError) as refused:
            ours.requests.take(2)
        assert refusal(refused.value) == (
            ErrorKind.OVERLOADED,
            1.0,
            "server overloaded: requests in progress at 3 of 4",
        )

        shared.forget_worker(1)
        ours.requests.take(4)
        ours.body_bytes.take(1000)
        ours.images.take(ours.limits.max_images_in_progress)


def test_a_worker_killed_inside_the_rate_lock_makes_others_wait_only_until_forget_worker() -> None:
    with shared_limits(2, lock_timeout_s=0.05) as shared:
        limiter = shared.rate_limiter(0, "5/second")
        with children(die_inside_the_rate_lock, (shared, 1)) as [(process, connection)]:
            assert receive(connection) == "inside"
            os.kill(process.pid or 0, signal.SIGKILL)
            process.join(WAIT_S)
        with pytest.raises(ServiceError) as refused:
            limiter.hit("address:10.0.0.4")
        assert refusal(refused.value)[:2] == (ErrorKind.OVERLOADED, 1.0) and "busy" in refused.value.message
        shared.forget_worker(1)
        state = limiter.hit("address:10.0.0.4")
        assert state is not None and state.allowed


def test_a_worker_killed_anywhere_is_forgotten_whole() -> None:
    """Killed at random while it takes, gives and hits as fast as it can: mostly holding a
    request slot, sometimes inside a lock. After forget_worker nothing is held and neither lock
    is stuck. (The locks' repair, case by case: the tests of Guard and repair below.)"""
    with shared_limits(2, max_requests_in_progress=1) as shared:
        ours = shared.admission(0)
        limiter = shared.rate_limiter(0, "1000000/second")
        for delay in (0.01, 0.037):
            with children(take_and_give_forever, (shared, 1)) as [(process, connection)]:
                assert receive(connection) == "running"
                time.sleep(delay)
                os.kill(process.pid or 0, signal.SIGKILL)
                process.join(WAIT_S)
            shared.forget_worker(1)
            with ours.requests.held(1):
                assert limiter.hit("address:10.0.0.2") is not None


def test_a_rate_limit_hit_from_two_processes_together_allows_its_amount_in_total() -> None:
    with shared_limits(2) as shared, children(hit_on_command, (shared, 0), (shared, 1)) as started:
        for round_ in range(3):
            # Start just after a window begins, so that the ten hits fall in one window.
            while not 20 <= int(time.monotonic() * 1000) % 1000 <= 300:
                time.sleep(0.005)
            identity = f"address:192.0.2.{round_}"
            for _, connection in started:
                connection.send(identity)
            answers = [receive(connection) for _, connection in started]
            if len({window for _, first, last in answers for window in (first, last)}) == 1:
                break
        else:
            pytest.fail("three rounds crossed a window boundary")
        states = [state for hits, _, _ in answers for state in hits]
        allowed = [remaining for ok, remaining, _, _ in states if ok]
        assert sorted(allowed) == [0, 1, 2, 3, 4]
        for ok, remaining, reset_s, headers in states:
            assert headers["RateLimit-Limit"] == "5" and headers["RateLimit-Policy"] == "5;w=1"
            assert headers["RateLimit-Remaining"] == str(remaining) and headers["RateLimit-Reset"] == str(reset_s)
            if not ok:
                assert remaining == 0 and reset_s == 1
        for _, connection in started:
            connection.send(None)
        here = shared.rate_limiter(0, "5/second").hit(identity)
        assert here is not None and not here.allowed


def test_the_memory_outlives_a_child_and_is_gone_after_unlink_without_resource_tracker_noise() -> None:
    """In a process of its own, so that its resource tracker's complaints (a KeyError for a name
    unregistered twice, a leaked segment) reach the stderr checked here."""
    script = f"""
import multiprocessing, os
from server.settings import LimitSettings
from server.shared_limits import SharedLimits
from tests.server.test_shared_limits import take_one_and_exit

shared = SharedLimits.create(2, LimitSettings())
path = "/dev/shm/" + shared.name
child = multiprocessing.get_context("spawn").Process(target=take_one_and_exit, args=(shared, 1))
child.start()
child.join({WAIT_S})
print(child.exitcode, os.path.exists(path), shared.admission(0).requests.in_use)
shared.close()
shared.unlink()
print(os.path.exists(path))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=2 * WAIT_S
    )
    assert (done.stdout.split(), done.stderr) == (["0", "True", "1", "False"], "")


# The lock a dead worker held, in one process: a Guard marks its holder; repair frees it.


def test_a_lock_held_by_a_dead_worker_refuses_after_the_timeout_until_repaired() -> None:
    lock = SPAWN.Lock()
    words = memoryview(bytearray(8)).cast("q")
    dead, live = Guard(lock, words, 0, 1, 0.05), Guard(lock, words, 0, 0, 0.05)
    dead.acquire()
    started = time.monotonic()
    with pytest.raises(ServiceError) as refused:
        live.acquire()
    assert time.monotonic() - started < 1.0
    assert refusal(refused.value)[:2] == (ErrorKind.OVERLOADED, 1.0) and "busy" in refused.value.message
    repair(lock, words, 0, 1)
    live.acquire()
    live.release()


def test_a_lock_taken_but_not_yet_marked_by_a_dead_worker_is_freed_after_the_repair_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("server.shared_limits.REPAIR_WAIT_S", 0.05)
    lock = SPAWN.Lock()
    words = memoryview(bytearray(8)).cast("q")
    lock.acquire()  # died before writing its mark
    repair(lock, words, 0, 1)
    assert lock.acquire(False)
    lock.release()
    repair(lock, words, 0, 1)  # a free lock stays free
    assert lock.acquire(False)


# Budgets of two workers over one segment, in one process.

OPERATIONS = st.lists(st.tuples(st.integers(0, 1), st.booleans(), st.integers(1, 4)), max_size=60)


@given(OPERATIONS)
def test_random_takes_and_gives_of_two_workers_never_exceed_the_capacity_and_sum_exactly(
    operations: list[tuple[int, bool, int]],
) -> None:
    with shared_limits(2, max_images_in_progress=6, max_images_per_request=6) as shared:
        budgets = [shared.admission(worker).images for worker in (0, 1)]
        held: list[list[int]] = [[], []]
        for worker, take, amount in operations:
            if take:
                fits = sum(map(sum, held)) + amount <= 6
                try:
                    budgets[worker].take(amount)
                    assert fits
                    held[worker].append(amount)
                except ServiceError as error:
                    assert not fits and error.kind is ErrorKind.OVERLOADED
            elif held[worker]:
                budgets[worker].give(held[worker].pop())
            assert budgets[0].in_use == budgets[1].in_use == sum(map(sum, held)) <= 6
        shared.forget_worker(0)
        assert budgets[1].in_use == sum(held[1])


def test_a_worker_number_outside_the_segment_is_refused() -> None:
    with shared_limits(2) as shared:
        for worker in (-1, 2):
            with pytest.raises(ValueError, match="worker"):
                shared.admission(worker)
    with pytest.raises(ValueError, match="power of two"):
        SharedLimits.create(1, LimitSettings(), rate_limit_slots=1000)


# The rate table's logic, in one process, on a fake clock.


def table(slots: int) -> WindowTable:
    words = memoryview(bytearray(8 * (1 + slots * SLOT_WORDS))).cast("q")
    return WindowTable(words, 1, slots, 0)


def test_a_full_neighbourhood_evicts_the_least_recently_hit_client_which_starts_over() -> None:
    rates = table(4)
    for key in (1, 2, 3, 4):
        assert rates.hit(key, 3, 1000, now_ms=10 * key)[:2] == (True, 2)
    rates.hit(1, 3, 1000, now_ms=50)  # 2 is now the least recently hit
    assert rates.hit(5, 3, 1000, now_ms=60)[:2] == (True, 2) and rates.evictions == 1
    assert rates.hit(1, 3, 1000, now_ms=70)[:2] == (True, 0)  # kept its count
    assert rates.hit(2, 3, 1000, now_ms=80)[:2] == (True, 2)  # evicted: from zero
    assert rates.evictions == 2


def test_expired_clients_make_room_without_evicting_anyone() -> None:
    rates = table(4)
    for key in (1, 2, 3, 4):
        rates.hit(key, 3, 1000, now_ms=100)
    # Two windows later both of their counts have left the sliding window.
    for key in (5, 6, 7, 8):
        assert rates.hit(key, 3, 1000, now_ms=2000)[:2] == (True, 2)
    assert rates.evictions == 0


@given(st.lists(st.tuples(st.integers(1, 2**63 - 1), st.integers(0, 500)), max_size=200))
def test_a_flood_of_new_clients_never_fails_a_hit_and_each_answer_is_in_range(hits: list[tuple[int, int]]) -> None:
    rates = table(8)
    now_ms = 0
    for key, advance_ms in hits:
        now_ms += advance_ms
        allowed, remaining, reset_ms = rates.hit(key, 5, 1000, now_ms)
        assert 0 <= remaining <= 4 if allowed else remaining == 0
        assert 0 <= reset_ms <= 1000


def test_a_hit_stamped_before_the_last_one_does_not_take_the_window_back() -> None:
    """Another process's clock read a moment earlier must not reset a count."""
    rates = table(4)
    assert rates.hit(7, 3, 1000, now_ms=1500)[:2] == (True, 2)
    assert rates.hit(7, 3, 1000, now_ms=999)[:2] == (True, 1)


class FakeTime:
    """The ``time`` the limits library reads, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


# Steps of 1/8 s and windows of 1 and 4 s: every time and weight is exact in binary, in both.
HITS = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 2), st.sampled_from(["3/second", "5 per 4 seconds"])))


@given(HITS)
def test_the_shared_counter_answers_as_the_limits_library_does_on_the_same_clock(
    hits: list[tuple[int, int, str]],
) -> None:
    clock = FakeTime(1000.0)
    fake_module = SimpleNamespace(time=clock.time)
    words = memoryview(bytearray(8 * (1 + 64 * SLOT_WORDS))).cast("q")
    shared = RateLimiter(None, SharedWindows(WindowTable(words, 1, 64, 0), NoLock(), clock.time))
    patches = [mock.patch(f"{module}.time", fake_module) for module in ("limits.storage.memory", "limits.strategies")]
    with patches[0], patches[1], mock.patch("server.rate_limit.time", fake_module):
        local = RateLimiter(None, LocalWindows())
        for eighths, client, spec in hits:
            clock.now += eighths / 8
            identity = f"address:198.51.100.{client}"
            assert shared.hit(identity, spec) == local.hit(identity, spec), (clock.now, identity, spec)


class NoLock:
    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


def test_the_shared_limiter_refuses_like_todays_past_the_limit() -> None:
    with shared_limits(1) as shared:
        limiter = shared.rate_limiter(0, "2/minute")
        states = [limiter.hit("address:203.0.113.1") for _ in range(3)]
        assert [(s.allowed, s.remaining) for s in states if s] == [(True, 1), (True, 0), (False, 0)]
        assert states[2] is not None and 1 <= states[2].reset_s <= 60
