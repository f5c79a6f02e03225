"""Jobs as the routes see them: submit (every limit checked before anything is stored), look up,
cancel; and the results of synchronous requests, kept by request id. Protocol-neutral: the
routes in ``server/api/job_routes.py`` render what this returns.

A job belongs to the client that submitted it (its API key, else its address): another client
asking for its id is told there is no such job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from model_contract.errors import ErrorKind, ServiceError, echo
from server.jobs.callbacks import CallbackPolicy
from server.service import ClassificationService
from server.settings import JobSettings
from server.store.model import JobView, NewJob, ResultStore

log = logging.getLogger(__name__)

# A full budget of queued jobs frees as jobs finish: minutes, not seconds.
RETRY_AFTER_S = 30.0
# Results written behind the answer: at most this many waiting; beyond, dropped (and counted).
MAX_PENDING_WRITES = 1000


class Jobs:
    def __init__(
        self,
        store: ResultStore,
        service: ClassificationService,
        settings: JobSettings,
        callbacks: CallbackPolicy,
        *,
        enabled: bool,
    ) -> None:
        self._store = store
        self._service = service
        self._settings = settings
        self._callbacks = callbacks
        self.enabled = enabled
        self._writes: set[asyncio.Task[None]] = set()
        self.dropped_writes = 0

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise ServiceError(ErrorKind.NOT_FOUND, "jobs are not enabled on this server (IMGSERVE_JOBS__ENABLED)")

    async def submit(
        self,
        owner: str,
        images: Sequence[bytes],
        filenames: Sequence[str],
        *,
        model: str,
        top_k: int,
        callback_url: str | None,
    ) -> str:
        """A new queued job's id. Refused before anything is stored: an unknown model (404), a
        top_k out of range (422), a callback URL that is malformed or not allowed (422), more
        images than a job may hold (413), and too many jobs queued (429)."""
        self._check_enabled()
        self._service.model(model)  # 404 for a model this server does not serve
        self._service.check_top_k(top_k)
        url = self._callbacks.check(callback_url) if callback_url else None
        if not images:
            raise ServiceError(ErrorKind.MISSING_FILE, "a job needs at least one image (multipart field 'files')")
        if len(images) > self._settings.max_images_per_job:
            raise ServiceError(
                ErrorKind.TOO_MANY_IMAGES, f"at most {self._settings.max_images_per_job} images in one job"
            )
        if await self._store.queued_jobs(owner) >= self._settings.max_queued_per_client:
            raise ServiceError(
                ErrorKind.RATE_LIMITED,
                f"{self._settings.max_queued_per_client} of your jobs are queued or running; wait for one to end",
                retry_after=RETRY_AFTER_S,
            )
        if await self._store.queued_jobs() >= self._settings.max_queued:
            raise ServiceError(ErrorKind.OVERLOADED, "the server's job queue is full", retry_after=RETRY_AFTER_S)
        job = NewJob(owner, model, top_k, url, list(images), [name[:256] for name in filenames])
        return await self._store.create_job(job)

    async def view(self, job_id: str, owner: str) -> JobView:
        self._check_enabled()
        job = await self._store.job(job_id, owner)
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

    def remember(self, request_id: str, owner: str, result: dict[str, Any], image: bytes | None) -> None:
        """Keep a synchronous request's answer, behind it: the client is not kept waiting for the
        store, and a store that falls behind drops (and counts) rather than queueing without end."""
        if len(self._writes) >= MAX_PENDING_WRITES:
            self.dropped_writes += 1
            return
        task = asyncio.ensure_future(self._save(request_id, owner, result, image))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _save(self, request_id: str, owner: str, result: dict[str, Any], image: bytes | None) -> None:
        try:
            await self._store.save_result(request_id, owner, result, image)
        except Exception:
            log.exception("could not store the result of request %s", echo(request_id))

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
