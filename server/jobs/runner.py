"""Runs jobs in the background of a server process: takes a queued job from the store, sends its
images through the same service (and batchers) as requests, at a lower priority, saves what
each image got, and delivers the job's callback when it ends.

Several processes (``--workers``) and replicas may run jobs from one store: the store hands a
job to one runner at a time, for a lease the runner renews between batches. A runner that dies
loses its lease, and another takes the job up where it stopped. A cancelled job stops at the
next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson

from model_contract.errors import ErrorKind, ServiceError, echo
from server.jobs.callbacks import CallbackPolicy
from server.jobs.render import job_body
from server.service import Classification, ClassificationService
from server.settings import JobSettings
from server.store.model import CallbackStatus, ClaimedJob, ItemOutcome, JobStatus, ResultStore
from server.work_pool import background

log = logging.getLogger(__name__)

BACKGROUND = 1
"""The batcher priority of a job's images: they run when no request a client waits on does."""
IDLE_POLL_S = 1.0
"""How often an idle runner looks for a job (and for callbacks that are due)."""
PRUNE_EVERY_S = 600.0
BUSY_RETRY_S = 0.25
"""The first wait before a busy server is asked again for the same images (then doubling)."""
# The server's state, not a job's fault: wait and try the same images again.
TRANSIENT = frozenset(
    {ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.NOT_READY, ErrorKind.UNAVAILABLE, ErrorKind.SHUTTING_DOWN}
)

Notify = Callable[[str, dict[str, Any]], None]


def _error(error: ServiceError) -> dict[str, str]:
    return {"code": error.kind.value, "message": error.message}


class JobRunner:
    def __init__(
        self,
        store: ResultStore,
        service: ClassificationService,
        settings: JobSettings,
        callbacks: CallbackPolicy,
        *,
        name: str,
        notify: Notify | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._service = service
        self._settings = settings
        self._callbacks = callbacks
        self._name = name
        self._notify = notify
        self._rng = rng or random.Random()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        # Each loop holds its leases under a name of its own: a loop whose lease ran out must find
        # its renewal refused when a sibling has taken the job up, as one in another process does.
        names = [f"{self._name}/{i}" for i in range(self._settings.concurrency)]
        self._tasks = [asyncio.create_task(self._run_jobs(name), name=f"jobs-{name}") for name in names]
        for i in range(self._settings.callback_senders):
            self._tasks.append(asyncio.create_task(self._deliver_callbacks(), name=f"callbacks-{self._name}/{i}"))
        self._tasks.append(asyncio.create_task(self._prune(), name=f"prune-{self._name}"))

    async def close(self, timeout_s: float) -> None:
        """Take no more work; let the batch in progress end (within ``timeout_s``), then stop.
        A job left unfinished keeps its images' outcomes so far; another runner (or this one
        after a restart) takes it up once its lease runs out."""
        self._stopping.set()
        if not self._tasks:
            return
        _, late = await asyncio.wait(self._tasks, timeout=timeout_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the runner is told to stop."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _forever(self, step: Callable[[], Any], what: str, every_s: float) -> None:
        while not self._stopping.is_set():
            try:
                busy = await step()
            except Exception:
                log.exception("%s failed; trying again", what)
                busy = False
            if not busy:
                await self._pause(every_s)

    # Jobs.

    async def _run_jobs(self, runner: str) -> None:
        await self._forever(lambda: self._run_one(runner), "running a job", IDLE_POLL_S)

    async def _run_one(self, runner: str) -> bool:
        if self._service.readiness().draining:
            return False  # the server is going away: another takes the next job
        job = await self._store.claim_job(runner, self._settings.lease_s)
        if job is None:
            return False
        log.info("job %s: %d images on %s", job.id, job.images_total, job.model)
        await self._run(job, runner)
        return True

    async def _run(self, job: ClaimedJob, runner: str) -> None:
        background.set(True)  # this task's decodes queue behind requests' (server/work_pool.py)
        try:
            model = self._service.model(job.model)
            chunk = min(self._settings.images_per_batch, model.max_batch_size, model.max_images)
        except ServiceError:
            chunk = 1  # the model has gone: each image will say so
        while True:
            if self._stopping.is_set():
                return  # the lease runs out, and the job is taken up again where it stopped
            if not await self._store.renew_lease(job.id, runner, self._settings.lease_s):
                log.info("job %s: cancelled, or taken by another runner; stopping", job.id)
                return
            pending = await self._store.pending_images(job.id, chunk)
            if not pending:
                break
            outcomes = await self._classify(job, pending, runner)
            if outcomes is None:
                return
            await self._store.save_outcomes(job.id, outcomes)
        view = await self._store.job(job.id, job.owner)
        failed = view is not None and view.images_failed == view.images_total
        await self._store.finish_job(job.id, JobStatus.FAILED if failed else JobStatus.DONE)
        log.info("job %s: %s", job.id, "failed" if failed else "done")

    async def _classify(
        self, job: ClaimedJob, pending: list[tuple[int, bytes]], runner: str
    ) -> list[ItemOutcome] | None:
        """Each image's outcome; when the server is busy (overload, a deadline passed behind
        requests, warm-up), wait and try again, renewing the lease; None if told to stop."""
        delay = BUSY_RETRY_S
        while not self._stopping.is_set():
            try:
                results = await self._service.classify_many(
                    [image for _, image in pending], model_name=job.model, k=job.top_k, priority=BACKGROUND
                )
            except ServiceError as exc:
                if exc.kind not in TRANSIENT:
                    return [ItemOutcome(index, error=_error(exc)) for index, _ in pending]
                # Within the lease, which is renewed right after.
                await self._pause(min(max(exc.retry_after or 0.0, delay), self._settings.lease_s / 2))
                delay = min(delay * 2, self._settings.lease_s / 2)
                if not await self._store.renew_lease(job.id, runner, self._settings.lease_s):
                    return []
                continue
            outcomes = []
            for (index, _), result in zip(pending, results, strict=True):
                if isinstance(result, Classification):
                    body = result.as_dict()
                    outcomes.append(ItemOutcome(index, result=body))
                    if self._notify is not None:
                        self._notify(f"{job.id}/{index}", body)
                else:
                    outcomes.append(ItemOutcome(index, error=_error(result)))
            return outcomes
        return None

    # Callbacks.

    async def _deliver_callbacks(self) -> None:
        await self._forever(self._deliver_due, "delivering callbacks", IDLE_POLL_S)

    async def _deliver_due(self) -> bool:
        # One at a time per sender: each is withheld from other senders only while its own
        # attempt may last.
        due = await self._store.due_callbacks(limit=1)
        for callback in due:
            job = await self._store.job(callback.job_id, callback.owner)
            if job is None:
                continue
            attempt = await self._callbacks.deliver(callback.url, orjson.dumps(job_body(job)))
            if attempt.ok:
                await self._store.callback_attempted(job.id, CallbackStatus.DELIVERED, None, None)
                continue
            retry_in = self._callbacks.retry_delay(callback.attempts + 1, self._rng)
            status = CallbackStatus.PENDING if retry_in is not None else CallbackStatus.FAILED
            # The host only: a callback URL often carries a token.
            host = urlsplit(callback.url).hostname
            log.warning("job %s: callback to %s failed: %s", job.id, echo(host), attempt.error)
            await self._store.callback_attempted(job.id, status, attempt.error, retry_in)
        return bool(due)

    # Retention.

    async def _prune(self) -> None:
        async def prune() -> bool:
            removed = await self._store.prune()
            if removed:
                log.info("pruned %d stored rows past their retention", removed)
            return False

        await self._forever(prune, "pruning the store", PRUNE_EVERY_S)
