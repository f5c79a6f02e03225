"""What the result store keeps, as the rest of the server sees it: plain data, and the
``ResultStore`` interface (``server/store/sql.py`` implements it with SQLAlchemy).

Every read and write names the job's or result's ``owner`` (the client's identity: its API key's
name, or its address): a client sees only what it submitted, and another's id is "not found".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Protocol


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    """Every image failed (each has its error)."""
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


class CallbackStatus(str, Enum):
    NONE = "none"
    """The job asked for no callback."""
    PENDING = "pending"
    """Not delivered yet: the job has not finished, or an attempt failed and another is due."""
    DELIVERED = "delivered"
    FAILED = "failed"
    """Every attempt failed; no more will be made."""


@dataclass(frozen=True)
class NewJob:
    owner: str
    model: str
    top_k: int
    callback_url: str | None
    images: list[bytes]
    filenames: list[str]
    """One per image, as the client named its parts (may be empty strings)."""


@dataclass(frozen=True)
class ClaimedJob:
    """A job a runner has taken (until its lease ends)."""

    id: str
    owner: str
    model: str
    top_k: int
    images_total: int


@dataclass(frozen=True)
class ItemOutcome:
    index: int
    result: dict[str, Any] | None = None
    """The image's classification (as /v1/classify answers it), or None with ``error``."""
    error: dict[str, str] | None = None
    """``{"code", "message"}``, as imgserve's errors are."""


@dataclass(frozen=True)
class JobItemView:
    index: int
    filename: str
    status: str
    """pending, done or failed."""
    result: dict[str, Any] | None
    error: dict[str, str] | None


@dataclass(frozen=True)
class JobView:
    id: str
    owner: str
    status: JobStatus
    model: str
    top_k: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    images_total: int
    images_done: int
    callback_url: str | None
    callback_status: CallbackStatus
    callback_attempts: int
    callback_error: str | None
    images_failed: int = 0
    """Images whose outcome is an error."""
    items: list[JobItemView] = field(default_factory=list)
    """The items asked for (a window of them), in order."""


@dataclass(frozen=True)
class DueCallback:
    job_id: str
    owner: str
    url: str
    attempts: int
    """Attempts made so far."""


class QueueFull(Exception):
    """Too many jobs queued or running: the owner's (``per_owner``) or everyone's."""

    def __init__(self, per_owner: bool) -> None:
        super().__init__("the owner's job queue is full" if per_owner else "the job queue is full")
        self.per_owner = per_owner


class ResultStore(Protocol):
    async def create_job(self, job: NewJob, max_per_owner: int | None = None, max_total: int | None = None) -> str:
        """Store a queued job with its images (held until they have run); its new id. Raises
        ``QueueFull`` when the owner holds ``max_per_owner`` places, or everyone ``max_total``
        (see ``queued_jobs``): counted in the same transaction as the insert, so concurrent
        submissions cannot get past the limits together."""
        ...

    async def queued_jobs(self, owner: str | None = None) -> int:
        """Places held in the job queue. Everyone's: jobs queued or running. An owner's: those,
        and finished jobs whose callback is still to be delivered, so that a receiver that never
        answers cannot pile up deliveries for one client (and delay everyone's)."""
        ...

    async def claim_job(self, runner: str, lease_s: float) -> ClaimedJob | None:
        """Take the oldest queued job (or a running one whose runner's lease ran out: it
        crashed), atomically: two runners never get the same job. None when there is none."""
        ...

    async def renew_lease(self, job_id: str, runner: str, lease_s: float) -> bool:
        """Keep the job; False when it was cancelled or another runner has it."""
        ...

    async def pending_images(self, job_id: str, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` of the job's images without an outcome yet: (index, bytes), in order."""
        ...

    async def save_outcomes(self, job_id: str, outcomes: list[ItemOutcome]) -> None:
        """Record images' outcomes (and let go of their bytes, unless images are kept)."""
        ...

    async def finish_job(self, job_id: str, status: JobStatus) -> None:
        """DONE or FAILED: stamps the time; the callback, if any, becomes due."""
        ...

    async def cancel_job(self, job_id: str, owner: str) -> JobView | None:
        """Cancel a job that has not finished (a finished one is left as it is); its view
        (without its items), or None when ``owner`` has no such job."""
        ...

    async def job(self, job_id: str, owner: str, items: tuple[int, int] | None = None) -> JobView | None:
        """The job, with its items from ``items`` = (offset, limit), in order (None: no items)."""
        ...

    async def due_callbacks(self, limit: int) -> list[DueCallback]:
        """Finished jobs whose callback is pending and whose next attempt is due now, each taken
        for a while (its next attempt moves on): two processes never deliver one at once."""
        ...

    async def callback_attempted(
        self, job_id: str, status: CallbackStatus, error: str | None, retry_in_s: float | None
    ) -> None:
        """Record an attempt: DELIVERED, FAILED (no more), or PENDING again ``retry_in_s`` on."""
        ...

    async def save_result(self, request_id: str, owner: str, result: dict[str, Any], image: bytes | None) -> None:
        """A synchronous request's answer, by its request id (and its image, if images are kept)."""
        ...

    async def result(self, request_id: str, owner: str) -> dict[str, Any] | None: ...

    async def prune(self) -> int:
        """Delete what the retention settings say is too old or too much; how many rows went."""
        ...

    async def close(self) -> None: ...
