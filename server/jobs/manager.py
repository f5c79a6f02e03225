"""Jobs as the routes see them: check a submission (before its images are read), submit, look up
(a window of the results at a time), cancel; and the results of synchronous requests, kept by
request id. Protocol-neutral: the routes in ``server/api/job_routes.py`` render what this returns.

A job belongs to the client that submitted it (its API key, else its address): another client
asking for its id is told there is no such job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from model_contract.errors import ErrorKind, ServiceError, echo
from server.jobs.callbacks import CallbackPolicy
from server.service import ClassificationService
from server.settings import JobSettings, StoreSettings
from server.store.model import JobView, NewJob, QueueFull, ResultStore

log = logging.getLogger(__name__)

# A full budget of queued jobs frees as jobs finish: minutes, not seconds.
RETRY_AFTER_S = 30.0
# Results written behind the answer, with their images (hashed, and kept when images are kept):
# at most this many bytes waiting; beyond, dropped (and counted).
MAX_PENDING_WRITE_BYTES = 64 * 1024 * 1024
MAX_FILENAME_CHARS = 256
MOST_RESULTS = 1000
"""Most image results one GET of a job returns (``limit``): a job holds up to 10,000."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Submission:
    """A job's settings, checked before its images are read."""

    owner: str
    model: str
    top_k: int
    callback_url: str | None


def clean_filename(name: str) -> str:
    """A client's file name as a job keeps it: no control characters (a NUL is no PostgreSQL
    text), and not longer than ``MAX_FILENAME_CHARS``."""
    return _CONTROL.sub("", name)[:MAX_FILENAME_CHARS]


class Jobs:
    def __init__(
        self,
        store: ResultStore,
        service: ClassificationService,
        settings: JobSettings,
        store_settings: StoreSettings,
        callbacks: CallbackPolicy,
        dropped_writes: Counter,
        *,
        enabled: bool,
    ) -> None:
        self._store = store
        self._service = service
        self._settings = settings
        self._store_settings = store_settings
        self._callbacks = callbacks
        self._dropped_writes = dropped_writes
        self.enabled = enabled
        self._writes: set[asyncio.Task[None]] = set()
        self._pending_bytes = 0

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise ServiceError(ErrorKind.NOT_FOUND, "jobs are not enabled on this server (IMGSERVE_JOBS__ENABLED)")

    async def admit(self, owner: str) -> None:
        """Before a submission's body is read: jobs enabled, and a place in the client's queue
        and in everyone's (429 with Retry-After). A cheap early answer for a client at its limit;
        ``submit`` counts again in the insert's own transaction, which is the authority."""
        self._check_enabled()
        limits = self._settings
        if await self._store.queued_jobs(owner) >= limits.max_queued_per_client:
            raise self._queue_full(per_owner=True)
        if await self._store.queued_jobs() >= limits.max_queued:
            raise self._queue_full(per_owner=False)

    def _queue_full(self, *, per_owner: bool) -> ServiceError:
        if per_owner:
            return ServiceError(
                ErrorKind.RATE_LIMITED,
                f"{self._settings.max_queued_per_client} of your jobs are queued, running or delivering their "
                "callback; wait for one to end",
                retry_after=RETRY_AFTER_S,
            )
        return ServiceError(ErrorKind.OVERLOADED, "the server's job queue is full", retry_after=RETRY_AFTER_S)

    def check(self, owner: str, *, model: str, top_k: int, callback_url: str | None) -> Submission:
        """Everything about a submission but its images, before they are read: an unknown model
        (404), a top_k out of range (422), a callback URL that is malformed or not allowed (422)."""
        self._check_enabled()
        self._service.model(model)
        self._service.check_top_k(top_k)
        url = self._callbacks.check(callback_url) if callback_url else None
        return Submission(owner, model, top_k, url)

    async def submit(self, submission: Submission, images: Sequence[bytes], filenames: Sequence[str]) -> str:
        """A new queued job's id. Refused before anything is stored: no images (400), more than a
        job may hold (413), too many jobs queued, the client's (429) or everyone's (429)."""
        if not images:
            raise ServiceError(ErrorKind.MISSING_FILE, "a job needs at least one image (multipart field 'files')")
        if len(images) > self._settings.max_images_per_job:
            raise ServiceError(
                ErrorKind.TOO_MANY_IMAGES, f"at most {self._settings.max_images_per_job} images in one job"
            )
        s = submission
        job = NewJob(s.owner, s.model, s.top_k, s.callback_url, list(images), [clean_filename(n) for n in filenames])
        try:
            return await self._store.create_job(
                job, max_per_owner=self._settings.max_queued_per_client, max_total=self._settings.max_queued
            )
        except QueueFull as full:
            raise self._queue_full(per_owner=full.per_owner) from None

    async def view(self, job_id: str, owner: str, offset: int = 0, limit: int = 100) -> JobView:
        """The job, with the results of images ``offset`` to ``offset + limit``."""
        self._check_enabled()
        if not 0 <= offset < 2**31 or not 0 <= limit <= MOST_RESULTS:
            raise ServiceError(
                ErrorKind.INVALID_PARAMETER, f"offset must be 0 or more, and limit from 0 to {MOST_RESULTS}"
            )
        job = await self._store.job(job_id, owner, items=(offset, limit) if limit else None)
        if job is None:
            raise ServiceError(ErrorKind.NOT_FOUND, f"no job {echo(job_id)}")
        return job

    async def cancel(self, job_id: str, owner: str) -> JobView:
        """Cancel a job that has not finished; a finished one is answered as it is."""
        self._check_enabled()
        job = await self._store.cancel_job(job_id, owner)
        if job is None:
            raise ServiceError(ErrorKind.NOT_FOUND, f"no job {echo(job_id)}")
        return job

    def remember(self, request_id: str, owner: str, result: dict[str, Any], image: bytes) -> None:
        """Keep a synchronous request's answer with its image's hash (and the image, when images
        are kept), behind the answer: the client is not kept waiting for the store, and a store
        that falls behind drops (counted) rather than holding images without end."""
        if not self._store_settings.keep_results or not request_id:
            return
        if self._pending_bytes + len(image) > MAX_PENDING_WRITE_BYTES:
            self._dropped_writes.inc()
            return
        self._pending_bytes += len(image)
        task = asyncio.ensure_future(self._save(request_id, owner, result, image))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _save(self, request_id: str, owner: str, result: dict[str, Any], image: bytes) -> None:
        try:
            await self._store.save_result(request_id, owner, result, image)
        except Exception:
            log.exception("could not store the result of request %s", echo(request_id))
        finally:
            self._pending_bytes -= len(image)

    async def result(self, request_id: str, owner: str) -> dict[str, Any]:
        found = await self._store.result(request_id, owner)
        if found is None:
            raise ServiceError(ErrorKind.NOT_FOUND, f"no stored result for request {echo(request_id)}")
        return found

    async def close(self) -> None:
        """Let the results being written finish (bounded)."""
        if self._writes:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._writes, return_exceptions=True), 5)
