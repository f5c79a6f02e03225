"""Admission budgets and rate-limit counts shared by the server's worker processes: with N
workers, a limit holds for the server, not N times over.

The supervisor creates one ``SharedLimits`` before it starts any worker and passes it to each as
a ``Process`` argument (spawn context: like the locks inside it, it pickles only then)::

    shared = SharedLimits.create(workers, settings.limits)
    ctx.Process(target=worker_main, args=(index, shared, ...)).start()
    # in worker ``index`` (0 <= index < workers), once:
    admission = shared.admission(index)
    rate_limiter = shared.rate_limiter(index, settings.rate_limit)
    # in the supervisor, once worker ``index`` is dead (joined, or its sentinel ready) and
    # before its replacement starts:
    shared.forget_worker(index)
    # in the supervisor, after the last worker has ended:
    shared.close()
    shared.unlink()

One ``multiprocessing.shared_memory`` segment of int64 words holds a header, the budgets (a row
per worker, a column per budget) and the rate-limit table (``server.shared_rate_limit``).

- A budget ``take`` sums its column over all rows under the budgets' lock, checks the capacity
  and adds to its own row; ``give`` subtracts from its own row without the lock (only this
  worker writes its row, and an aligned 8-byte store is seen whole by readers; a reader that
  sees the row just before a give only refuses more). A worker killed with kill -9 leaves its
  row behind, and ``forget_worker`` zeroes it: nothing stays taken past its restart.
- Each lock (one for the budgets, one for the rate table) is held for a few microseconds, and
  its holder writes its worker number next to it: ``forget_worker`` frees a lock that the dead
  worker held. Waiting for a lock is bounded (``lock_timeout_s``); past it the request is refused
  as overloaded (429 with Retry-After), never left waiting.
- Like ``Budget`` today, one worker's counts are used from one thread, its event loop's.

Python 3.11's resource tracker: attaching to a segment registers its name with the tracker.
Workers started by the supervisor (spawn or fork) share the supervisor's tracker, which keeps one
set of names: a worker's registration is the supervisor's own, so a worker's exit, even by
kill -9, leaves the segment alone, and the supervisor's ``unlink`` unregisters it once. A worker
must therefore NOT call ``resource_tracker.unregister``: it would drop the supervisor's
registration, so that the tracker prints a KeyError at ``unlink`` and cleans up nothing if the
supervisor itself is killed (then the tracker unlinks the segment once the last worker has gone).
"""

from __future__ import annotations

import multiprocessing
import time
import weakref
from collections.abc import Callable
from multiprocessing.shared_memory import SharedMemory
from multiprocessing.synchronize import Lock

from model_contract.errors import ErrorKind, ServiceError
from server.admission import RETRY_AFTER_S, Admission
from server.rate_limit import RateLimiter
from server.settings import LimitSettings
from server.shared_rate_limit import SharedWindows, WindowTable

# Header words: who holds each lock (worker + 1; 0: none) and the rate table's evictions.
BUDGETS_HOLDER, RATES_HOLDER, EVICTIONS = range(3)
HEADER_WORDS = 8
BUDGETS = 3  # columns: requests in progress, body bytes in flight, images in progress
# A live holder keeps a lock for microseconds: one that has not marked itself after this long
# is taken to be the dead worker, killed between taking the lock and marking it.
REPAIR_WAIT_S = 1.0


class Guard:
    """A lock shared by the workers that knows which worker holds it."""

    def __init__(self, lock: Lock, words: memoryview, holder_at: int, worker: int, timeout_s: float) -> None:
        self._lock = lock
        self._words = words
        self._holder_at = holder_at
        self._mark = worker + 1
        self._timeout_s = timeout_s

    def acquire(self) -> None:
        if not self._lock.acquire(True, self._timeout_s):
            raise ServiceError(
                ErrorKind.OVERLOADED,
                "server overloaded: the limits shared by the server's workers are busy",
                retry_after=RETRY_AFTER_S,
            )
        self._words[self._holder_at] = self._mark

    def release(self) -> None:
        words = self._words
        if words[self._holder_at] == self._mark:  # else repair freed it, and another has marked it
            words[self._holder_at] = 0
        # Not contextlib.suppress: this runs on every request. ValueError: forget_worker took
        # this worker for dead and freed the lock (see repair).
        try:  # noqa: SIM105
            self._lock.release()
        except ValueError:
            pass


def repair(lock: Lock, words: memoryview, holder_at: int, worker: int) -> None:
    """Free ``lock`` if dead ``worker`` held it: marked as its holder, or held unmarked for
    longer than any live worker would (it died between taking the lock and marking it)."""
    if words[holder_at] == worker + 1:
        words[holder_at] = 0
        lock.release()
    elif lock.acquire(True, REPAIR_WAIT_S) or words[holder_at] == 0:
        lock.release()


class SharedCount:
    """One budget's count over all workers' rows (``server.admission.Count``)."""

    def __init__(self, words: memoryview, guard: Guard, cells: tuple[int, ...], mine: int) -> None:
        self._words = words
        self._guard = guard
        self._cells = cells
        self._mine = mine

    def try_take(self, amount: int, capacity: int) -> bool:
        words = self._words
        self._guard.acquire()
        try:
            total = 0
            for at in self._cells:
                total += words[at]
            if total + amount > capacity:
                return False
            words[self._mine] += amount
            return True
        finally:
            self._guard.release()

    def give(self, amount: int) -> None:
        self._words[self._mine] -= amount

    def in_use(self) -> int:
        words = self._words
        self._guard.acquire()
        try:
            return sum(words[at] for at in self._cells)
        finally:
            self._guard.release()


def _detach(words: memoryview, memory: SharedMemory) -> None:
    words.release()  # the segment cannot close while a view of it is exported
    memory.close()


class SharedLimits:
    def __init__(
        self,
        memory: SharedMemory,
        workers: int,
        slots: int,
        limits: LimitSettings,
        locks: tuple[Lock, Lock],
        lock_timeout_s: float,
    ) -> None:
        """Use ``create`` in the supervisor; a worker gets its copy by unpickling."""
        self.limits = limits
        self.workers = workers
        self._memory = memory
        self._slots = slots
        self._locks = locks
        self._lock_timeout_s = lock_timeout_s
        if memory.buf is None:
            raise ValueError(f"shared memory {memory.name} is closed")
        self._words = memory.buf.cast("q")
        # Closes the segment when this object goes, even unclosed: never with a view still on it.
        self._finalizer = weakref.finalize(self, _detach, self._words, memory)
        self._table = WindowTable(self._words, self._table_base(), slots, EVICTIONS)

    @classmethod
    def create(
        cls, workers: int, limits: LimitSettings, rate_limit_slots: int = 65536, *, lock_timeout_s: float = 0.25
    ) -> SharedLimits:
        """A new zeroed segment for ``workers`` workers and a rate table of ``rate_limit_slots``
        clients (a power of two; 48 bytes each). A worker waits at most ``lock_timeout_s`` for a
        lock (then 429): time enough for any live holder, short enough not to stall its loop."""
        if workers < 1:
            raise ValueError(f"shared limits need at least one worker, not {workers}")
        if lock_timeout_s <= 0:
            raise ValueError("lock_timeout_s must be positive")
        words = HEADER_WORDS + workers * BUDGETS + WindowTable.words_for(rate_limit_slots)
        ctx = multiprocessing.get_context("spawn")
        locks = (ctx.Lock(), ctx.Lock())
        memory = SharedMemory(create=True, size=8 * words)  # a new segment reads as zeros
        return cls(memory, workers, rate_limit_slots, limits, locks, lock_timeout_s)

    def __reduce__(self) -> tuple[Callable[..., SharedLimits], tuple[object, ...]]:
        return _attach, (self.name, self.workers, self._slots, self.limits, self._locks, self._lock_timeout_s)

    @property
    def name(self) -> str:
        """The segment's name (under /dev/shm on Linux)."""
        return self._memory.name

    def _table_base(self) -> int:
        return HEADER_WORDS + self.workers * BUDGETS

    def _check(self, worker: int) -> None:
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} is not one of 0..{self.workers - 1}")

    def admission(self, worker: int) -> Admission:
        """Worker ``worker``'s admission: its three budgets hold for all workers together."""
        self._check(worker)
        guard = Guard(self._locks[0], self._words, BUDGETS_HOLDER, worker, self._lock_timeout_s)
        counts = [
            SharedCount(
                self._words,
                guard,
                tuple(HEADER_WORDS + row * BUDGETS + column for row in range(self.workers)),
                HEADER_WORDS + worker * BUDGETS + column,
            )
            for column in range(BUDGETS)
        ]
        return Admission(self.limits, requests=counts[0], body_bytes=counts[1], images=counts[2])

    def rate_limiter(
        self, worker: int, default_spec: str | None, clock: Callable[[], float] = time.monotonic
    ) -> RateLimiter:
        """Worker ``worker``'s rate limiter: every client's counts are shared by all workers."""
        self._check(worker)
        guard = Guard(self._locks[1], self._words, RATES_HOLDER, worker, self._lock_timeout_s)
        return RateLimiter(default_spec, SharedWindows(self._table, guard, clock))

    @property
    def evictions(self) -> int:
        """Live clients evicted from the rate table to make room for new ones (see
        ``server.shared_rate_limit``): a table too small for the traffic."""
        return self._table.evictions

    def forget_worker(self, worker: int) -> None:
        """Supervisor, once ``worker`` is dead and before it is restarted: free what it held
        (its budgets, and a lock it died holding). Its rate-limit hits stay counted. Takes
        microseconds, or ``REPAIR_WAIT_S`` if the worker died just after taking a lock."""
        self._check(worker)
        repair(self._locks[0], self._words, BUDGETS_HOLDER, worker)
        repair(self._locks[1], self._words, RATES_HOLDER, worker)
        for column in range(BUDGETS):
            self._words[HEADER_WORDS + worker * BUDGETS + column] = 0

    def close(self) -> None:
        """Detach this process from the segment; its admissions and rate limiters stop working."""
        self._finalizer()

    def unlink(self) -> None:
        """Destroy the segment (supervisor, once every worker has ended)."""
        self._memory.unlink()


def _attach(
    name: str, workers: int, slots: int, limits: LimitSettings, locks: tuple[Lock, Lock], lock_timeout_s: float
) -> SharedLimits:
    # Registers the name with the resource tracker shared with the supervisor: see the module doc.
    return SharedLimits(SharedMemory(name), workers, slots, limits, locks, lock_timeout_s)
