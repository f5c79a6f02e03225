"""Jobs and the result store in a server process's life: opened when the app starts (when a
store is configured), closed before its models are."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from server.jobs.callbacks import CallbackPolicy
from server.jobs.manager import Jobs
from server.jobs.runner import JobRunner, Notify
from server.metrics import Metrics
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


async def open_jobs(
    settings: Settings, service: ClassificationService, metrics: Metrics, notify: Notify
) -> JobsInProcess | None:
    """The store, jobs and (when jobs are enabled) a runner; None without a store."""
    url = settings.store_url
    if url is None:
        return None
    jobs_settings = settings.jobs
    # A callback handed to this process is withheld from the others while its attempt may last.
    claim_s = 2 * (jobs_settings.callback_connect_timeout_s + jobs_settings.callback_read_timeout_s) + 10
    store = await SqlResultStore.open(url.get_secret_value(), settings.store, callback_claim_s=claim_s)
    callbacks = CallbackPolicy.from_settings(settings)
    drops = metrics.result_write_drops
    jobs = Jobs(store, service, jobs_settings, settings.store, callbacks, drops, enabled=jobs_settings.enabled)
    runner = None
    if settings.jobs.enabled:
        # Unique across processes and replicas: the store hands each job to one runner by name.
        name = f"{socket.gethostname()}-{os.getpid()}"
        runner = JobRunner(store, service, settings.jobs, callbacks, name=name, notify=notify)
        runner.start()
    return JobsInProcess(jobs, store, runner)
