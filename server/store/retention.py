"""What ``prune()`` deletes: rows older than the retention time, and kept images over budget."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from server.store.model import JobStatus
from server.store.schema import Job, KeptImage, StoredResult

FINISHED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


async def delete_expired(connection: AsyncConnection, cutoff: datetime) -> int:
    """Jobs finished before ``cutoff`` (their items go with them: ON DELETE CASCADE) and results
    stored before it; how many jobs and results. An unfinished job stays, however old."""
    jobs = await connection.execute(
        delete(Job).where(Job.status.in_(FINISHED), Job.finished_at < cutoff).returning(Job.id)
    )
    results = await connection.execute(
        delete(StoredResult).where(StoredResult.created_at < cutoff).returning(StoredResult.request_id)
    )
    return len(jobs.all()) + len(results.all())


async def delete_images_over(connection: AsyncConnection, max_bytes: int) -> list[str]:
    """Deletes the rows of the oldest kept images while all of them hold more than ``max_bytes``
    (0: no limit); the paths of their files, for the caller to remove once this commits."""
    if max_bytes <= 0:
        return []
    total = (await connection.execute(select(func.coalesce(func.sum(KeptImage.size), 0)))).scalar_one()
    if total <= max_bytes:
        return []
    oldest_first = await connection.execute(
        select(KeptImage.created_at, KeptImage.sha256, KeptImage.path, KeptImage.size).order_by(
            KeptImage.created_at, KeptImage.sha256
        )
    )
    paths: list[str] = []
    last: tuple[datetime, str] | None = None
    for created_at, digest, path, size in oldest_first:
        if total <= max_bytes:
            break
        paths.append(path)
        last = (created_at, digest)
        total -= size
    if last is not None:
        # Up to the last one going, in the same order: no list of thousands of bound hashes.
        await connection.execute(delete(KeptImage).where(tuple_(KeptImage.created_at, KeptImage.sha256) <= last))
    return paths
