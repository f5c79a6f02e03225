"""Jobs and the result store in a server process's life: opened when the app starts (when a
store is configured), closed before its models are."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from server.jobs.callbacks import CallbackPolicy
from server.jobs.manager import Jobs
from server.jobs.runner import JobRunner, Notify
from server.service import ClassificationService
from server.settings import Settings
from server.store.model import ResultStore
from server.store.sql import SqlResultStore


@dataclass
class JobsInProcess:
    jobs: Jobs
    store: ResultStore
    runner: JobRunner | None

    async def close(self, timeout_s: float) -> None:
        """Stop taking jobs and let the batch in progress end, then close the store."""
        if self.runner is not None:
            await self.runner.close(timeout_s)
        await self.jobs.close()
        await self.store.close()


async def open_jobs(settings: Settings, service: ClassificationService, notify: Notify) -> JobsInProcess | None:
    """The store, jobs and (when jobs are enabled) a runner; None without a store."""
    url = settings.store_url
    if url is None:
        return None
    store = await SqlResultStore.open(url, settings.store)
    callbacks = CallbackPolicy.from_settings(settings)
    jobs = Jobs(store, service, settings.jobs, callbacks, enabled=settings.jobs.enabled)
    runner = None
    if settings.jobs.enabled:
        # Unique across processes and replicas: the store hands each job to one runner by name.
        name = f"{socket.gethostname()}-{os.getpid()}"
        runner = JobRunner(store, service, settings.jobs, callbacks, name=name, notify=notify)
        runner.start()
    return JobsInProcess(jobs, store, runner)
