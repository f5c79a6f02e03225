"""``ResultStore`` on SQLAlchemy's asyncio engine: SQLite (one server, any number of processes)
or PostgreSQL (replicas).

Claims are atomic on both: one ``UPDATE jobs ... WHERE id = (SELECT the oldest claimable job)
RETURNING ...``. On PostgreSQL the inner SELECT is ``FOR UPDATE SKIP LOCKED``, so concurrent
claimers each lock a different row rather than queue on the same one; on SQLite the statement
runs in a transaction begun IMMEDIATE, which holds the database's write lock from its first read
(``connection.writing``). Every state change is one such conditional UPDATE (``WHERE status IN
...``), so a late or duplicate call changes nothing that has moved on.

Time comes from the injected ``now`` (aware UTC), so tests move it rather than sleep.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, insert, literal, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.settings import StoreSettings
from server.store import kept_images
from server.store.conflicts import insert_kept_images, upsert_result
from server.store.connection import async_url, create_store_engine, sqlite_file, writing
from server.store.migrate import upgrade_to_head
from server.store.model import (
    CallbackStatus,
    ClaimedJob,
    DueCallback,
    ItemOutcome,
    JobStatus,
    JobView,
    NewJob,
    QueueFull,
)
from server.store.retention import FINISHED, delete_expired, delete_images_over
from server.store.schema import ItemStatus, Job, JobItem, KeptImage, StoredResult, UtcDateTime
from server.store.views import job_view

Clock = Callable[[], datetime]

UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)
# Any constant of our own (migrate.py has another): PostgreSQL's lock on counting and adding jobs.
_SUBMISSION_LOCK = 0x696D67_0001


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _places(owner: str | None) -> Select[int]:
    """Counts the places held in the job queue (``ResultStore.queued_jobs``)."""
    unfinished = Job.status.in_(UNFINISHED)
    if owner is None:
        return select(func.count()).select_from(Job).where(unfinished)
    delivering = Job.callback_status == CallbackStatus.PENDING
    return select(func.count()).select_from(Job).where(Job.owner == owner, or_(unfinished, delivering))


class SqlResultStore:
    """Open one with ``await SqlResultStore.open(url, settings)``; ``close()`` it at shutdown."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: StoreSettings,
        images_dir: Path | None,
        now: Clock = utc_now,
        callback_claim_s: float = 60.0,
    ) -> None:
        _check_images_dir(settings, images_dir)
        self._engine = engine
        self._settings = settings
        self._images_dir = images_dir
        self._now = now
        self._callback_claim = timedelta(seconds=callback_claim_s)

    @classmethod
    async def open(
        cls, url: str, settings: StoreSettings, *, now: Clock = utc_now, callback_claim_s: float = 60.0
    ) -> SqlResultStore:
        """Connect and migrate the database to the newest schema.

        ``callback_claim_s``: how long a callback handed out by ``due_callbacks`` is withheld from
        other processes while its attempt runs (its sender's connect and read timeouts, and more);
        if no attempt is recorded by then (the sender died), it is due again."""
        images_dir = settings.images_dir
        database = sqlite_file(async_url(url))
        if images_dir is None and database is not None:
            images_dir = database.parent / "images"
        _check_images_dir(settings, images_dir)
        engine = create_store_engine(url)
        try:
            await upgrade_to_head(engine)
            return cls(engine, settings, images_dir, now, callback_claim_s)
        except BaseException:
            await engine.dispose()
            raise

    async def close(self) -> None:
        await self._engine.dispose()

    # Jobs.

    async def create_job(self, job: NewJob, max_per_owner: int | None = None, max_total: int | None = None) -> str:
        if len(job.images) != len(job.filenames):
            raise ValueError(f"{len(job.images)} images but {len(job.filenames)} filenames")
        digests = await asyncio.to_thread(lambda: [kept_images.sha256(image) for image in job.images])
        job_id = uuid.uuid4().hex
        callback = CallbackStatus.PENDING if job.callback_url else CallbackStatus.NONE
        items = [
            {
                "job_id": job_id,
                "item_index": index,
                "filename": filename,
                "sha256": digest,
                "image": image,
                "status": ItemStatus.PENDING,
            }
            for index, (image, filename, digest) in enumerate(zip(job.images, job.filenames, digests, strict=True))
        ]
        async with writing(self._engine) as connection:
            await self._check_queue(connection, job.owner, max_per_owner, max_total)
            await connection.execute(
                insert(Job).values(
                    id=job_id,
                    owner=job.owner,
                    status=JobStatus.QUEUED,
                    model=job.model,
                    top_k=job.top_k,
                    callback_url=job.callback_url or None,
                    created_at=self._now(),
                    images_total=len(job.images),
                    images_done=0,
                    callback_status=callback,
                    callback_attempts=0,
                )
            )
            if items:
                await connection.execute(insert(JobItem), items)
        return job_id

    @staticmethod
    async def _check_queue(
        connection: AsyncConnection, owner: str, max_per_owner: int | None, max_total: int | None
    ) -> None:
        """Inside the submission's own write transaction: SQLite's is IMMEDIATE (it holds the
        write lock); on PostgreSQL submissions take a transaction lock of their own."""
        if max_per_owner is None and max_total is None:
            return
        if connection.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SUBMISSION_LOCK})
        if max_per_owner is not None and (await connection.execute(_places(owner))).scalar_one() >= max_per_owner:
            raise QueueFull(per_owner=True)
        if max_total is not None and (await connection.execute(_places(None))).scalar_one() >= max_total:
            raise QueueFull(per_owner=False)

    async def queued_jobs(self, owner: str | None = None) -> int:
        async with self._engine.connect() as connection:
            return (await connection.execute(_places(owner))).scalar_one()

    async def claim_job(self, runner: str, lease_s: float) -> ClaimedJob | None:
        async with writing(self._engine) as connection:
            # The time is read holding the write lock (SQLite's IMMEDIATE): read before, while a
            # submission held it, a job could start before it was created.
            now = self._now()
            claimable = or_(
                Job.status == JobStatus.QUEUED, and_(Job.status == JobStatus.RUNNING, Job.lease_until < now)
            )
            oldest = (
                select(Job.id)
                .where(claimable)
                .order_by(Job.created_at, Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has no row locks and omits it
                .scalar_subquery()
            )
            claim = (
                update(Job)
                .where(Job.id == oldest, claimable)
                .values(
                    status=JobStatus.RUNNING,
                    claimed_by=runner,
                    lease_until=now + timedelta(seconds=lease_s),
                    started_at=func.coalesce(Job.started_at, _time(now)),
                )
                .returning(Job.id, Job.owner, Job.model, Job.top_k, Job.images_total)
            )
            row = (await connection.execute(claim)).one_or_none()
        if row is None:
            return None
        job_id, owner, model, top_k, images_total = row
        return ClaimedJob(id=job_id, owner=owner, model=model, top_k=top_k, images_total=images_total)

    async def renew_lease(self, job_id: str, runner: str, lease_s: float) -> bool:
        async with writing(self._engine) as connection:
            renew = (
                update(Job)
                .where(Job.id == job_id, Job.claimed_by == runner, Job.status == JobStatus.RUNNING)
                .values(lease_until=self._now() + timedelta(seconds=lease_s))
                .returning(Job.id)
            )
            return (await connection.execute(renew)).one_or_none() is not None

    async def pending_images(self, job_id: str, limit: int) -> list[tuple[int, bytes]]:
        if limit <= 0:
            return []
        query = (
            select(JobItem.item_index, JobItem.image)
            .where(JobItem.job_id == job_id, JobItem.status == ItemStatus.PENDING, JobItem.image.is_not(None))
            .order_by(JobItem.item_index)
            .limit(limit)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [(index, image) for index, image in rows if image is not None]

    async def save_outcomes(self, job_id: str, outcomes: list[ItemOutcome]) -> None:
        for outcome in outcomes:
            if (outcome.result is None) == (outcome.error is None):
                raise ValueError(f"item {outcome.index}: an outcome has a result or an error, not both or neither")
        if not outcomes:
            return
        indexes = [outcome.index for outcome in outcomes]
        kept: list[dict[str, Any]] = []
        if self._settings.keep_images:
            kept = await self._keep(await self._pending_bytes(job_id, indexes))
        async with writing(self._engine) as connection:
            for outcome in outcomes:
                # Only a pending item takes an outcome: the first one recorded stays.
                await connection.execute(
                    update(JobItem)
                    .where(
                        JobItem.job_id == job_id,
                        JobItem.item_index == outcome.index,
                        JobItem.status == ItemStatus.PENDING,
                    )
                    .values(
                        status=ItemStatus.DONE if outcome.result is not None else ItemStatus.FAILED,
                        result=outcome.result,
                        error=outcome.error,
                        image=None,
                    )
                )
            # Counted, not incremented: the same outcome saved twice counts once.
            done = (
                select(func.count())
                .select_from(JobItem)
                .where(JobItem.job_id == job_id, JobItem.status != ItemStatus.PENDING)
                .scalar_subquery()
            )
            await connection.execute(update(Job).where(Job.id == job_id).values(images_done=done))
            await insert_kept_images(connection, kept)

    async def finish_job(self, job_id: str, status: JobStatus) -> None:
        if status not in (JobStatus.DONE, JobStatus.FAILED):
            raise ValueError(f"a job finishes DONE or FAILED, not {status.value}")
        async with writing(self._engine) as connection:
            await self._end(connection, job_id, status, Job.id == job_id)

    async def cancel_job(self, job_id: str, owner: str) -> JobView | None:
        """A queued or running job becomes CANCELLED: it is finished now, its images are let go,
        and its runner's next ``renew_lease`` is False. Its callback, if it asked for one, becomes
        due as for a job that ended otherwise: the receiver learns that no results are coming
        (whoever cancelled may not be whoever waits for the callback). A finished job is left as
        it is. The job's view (without its items), or None when ``owner`` has no such job."""
        async with writing(self._engine) as connection:
            await self._end(connection, job_id, JobStatus.CANCELLED, and_(Job.id == job_id, Job.owner == owner))
            return await job_view(connection, job_id, owner, items=None)

    async def _end(
        self, connection: AsyncConnection, job_id: str, status: JobStatus, which: ColumnElement[bool]
    ) -> None:
        now = self._now()
        has_callback = Job.callback_url.is_not(None)
        ended = await connection.execute(
            update(Job)
            .where(which, Job.status.in_(UNFINISHED))
            .values(
                status=status,
                finished_at=now,
                lease_until=None,
                callback_status=case((has_callback, CallbackStatus.PENDING.value), else_=CallbackStatus.NONE.value),
                callback_next_attempt_at=case((has_callback, _time(now)), else_=None),
            )
            .returning(Job.id)
        )
        if ended.one_or_none() is not None:
            # Images without an outcome now never get one.
            await connection.execute(
                update(JobItem).where(JobItem.job_id == job_id, JobItem.image.is_not(None)).values(image=None)
            )

    async def job(self, job_id: str, owner: str, items: tuple[int, int] | None = None) -> JobView | None:
        async with self._engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                # The job and its items from one snapshot (READ COMMITTED takes one per statement);
                # SQLite's transactions always read one.
                await connection.execution_options(isolation_level="REPEATABLE READ")
            return await job_view(connection, job_id, owner, items)

    # Callbacks.

    async def due_callbacks(self, limit: int) -> list[DueCallback]:
        """Finished jobs whose callback is pending and due now: up to ``limit``, the longest due
        first, listed in the order their jobs ended. Each is withheld
        from other callers for ``callback_claim_s`` (its next attempt moves on that far), so two
        processes never deliver the same callback at once; ``callback_attempted`` records the
        outcome, and a callback whose sender died is due again after that time."""
        if limit <= 0:
            return []
        now = self._now()
        due = and_(
            Job.callback_status == CallbackStatus.PENDING,
            Job.callback_next_attempt_at <= now,
            Job.status.in_(FINISHED),
        )
        oldest = (
            select(Job.id)
            .where(due)
            .order_by(Job.callback_next_attempt_at, Job.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            # Chosen once: as "id IN (subquery)", PostgreSQL may run the subquery again as it
            # joins, and SKIP LOCKED then finds other rows (more than ``limit`` were returned).
            .cte("due")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        claim = (
            update(Job)
            .where(Job.id == oldest.c.id, due)
            .values(callback_next_attempt_at=now + self._callback_claim)
            .returning(Job.id, Job.owner, Job.callback_url, Job.callback_attempts, Job.finished_at)
        )
        async with writing(self._engine) as connection:
            claimed = (await connection.execute(claim)).all()
        # RETURNING's order is the database's: the oldest job first, as the query chose them.
        rows = sorted(claimed, key=lambda row: (row[4], row[0]))
        return [
            DueCallback(job_id=job_id, owner=owner, url=url or "", attempts=attempts)
            for job_id, owner, url, attempts, _ in rows
        ]

    async def callback_attempted(
        self, job_id: str, status: CallbackStatus, error: str | None, retry_in_s: float | None
    ) -> None:
        if status is CallbackStatus.NONE:
            raise ValueError("an attempt ends DELIVERED, FAILED or PENDING")
        retry_at = None
        if status is CallbackStatus.PENDING:
            if retry_in_s is None:
                raise ValueError("a callback pending again needs retry_in_s")
            retry_at = self._now() + timedelta(seconds=retry_in_s)
        async with writing(self._engine) as connection:
            # Only a pending callback records attempts: a delivered one stays delivered.
            await connection.execute(
                update(Job)
                .where(Job.id == job_id, Job.callback_status == CallbackStatus.PENDING)
                .values(
                    callback_status=status,
                    callback_attempts=Job.callback_attempts + 1,
                    callback_error=error,
                    callback_next_attempt_at=retry_at,
                )
            )

    # Results of synchronous requests.

    async def save_result(self, request_id: str, owner: str, result: dict[str, Any], image: bytes | None) -> None:
        """Stored (or replaced: the same client sent the same request id again) unless results
        are not kept. The image's hash is kept with it; the image itself only with keep_images."""
        if not self._settings.keep_results:
            return
        kept: list[dict[str, Any]] = []
        digest = None
        if image is not None:
            # Hashing megabytes is CPU work: off the event loop (a thumbnail's is not worth a thread).
            digest = (
                kept_images.sha256(image) if len(image) <= 65536 else await asyncio.to_thread(kept_images.sha256, image)
            )
            if self._settings.keep_images:
                kept = await self._keep({digest: image})
        row = {"request_id": request_id, "owner": owner, "created_at": self._now(), "result": result, "sha256": digest}
        async with writing(self._engine) as connection:
            await upsert_result(connection, row)
            await insert_kept_images(connection, kept)

    async def result(self, request_id: str, owner: str) -> dict[str, Any] | None:
        query = select(StoredResult.result).where(StoredResult.request_id == request_id, StoredResult.owner == owner)
        async with self._engine.connect() as connection:
            return (await connection.execute(query)).scalar_one_or_none()

    # Retention.

    async def prune(self) -> int:
        """Finished jobs (their items with them) and stored results older than ``retention_s``,
        and the oldest kept images (rows and files) while they hold more than ``max_image_bytes``.
        How many jobs, results and images went (items are not counted)."""
        cutoff = self._now() - timedelta(seconds=self._settings.retention_s)
        async with writing(self._engine) as connection:
            removed = await delete_expired(connection, cutoff)
            paths = await delete_images_over(connection, self._settings.max_image_bytes)
        if paths and self._images_dir is not None:
            # After the commit, and not the files another process has kept again meanwhile (their
            # rows are back). What slips between the two (a keep at that very moment) leaves a row
            # whose file is gone: the next keep of that image writes it again.
            async with self._engine.connect() as connection:
                again = set(
                    (await connection.execute(select(KeptImage.path).where(KeptImage.path.in_(paths)))).scalars()
                )
            await asyncio.to_thread(kept_images.remove_images, self._images_dir, [p for p in paths if p not in again])
        return removed + len(paths)

    # Kept images.

    async def _pending_bytes(self, job_id: str, indexes: Sequence[int]) -> dict[str, bytes]:
        query = select(JobItem.sha256, JobItem.image).where(
            JobItem.job_id == job_id,
            JobItem.item_index.in_(indexes),
            JobItem.status == ItemStatus.PENDING,
            JobItem.image.is_not(None),
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return {digest: image for digest, image in rows if image is not None}

    async def _keep(self, images: dict[str, bytes]) -> list[dict[str, Any]]:
        """Writes the files (before their rows: a row never names a missing file); the rows."""
        if not images or self._images_dir is None:
            return []
        paths = await asyncio.to_thread(kept_images.write_images, self._images_dir, images)
        now = self._now()
        return [
            {"sha256": digest, "path": paths[digest], "size": len(image), "created_at": now}
            for digest, image in images.items()
        ]


def _check_images_dir(settings: StoreSettings, images_dir: Path | None) -> None:
    if settings.keep_images and images_dir is None:
        raise ValueError("keep_images needs images_dir (there is no SQLite file to put images/ beside)")


def _time(value: datetime) -> ColumnElement[datetime]:
    # A bound time inside an SQL expression (coalesce, case) needs the column's type spelled out.
    return literal(value, UtcDateTime())
