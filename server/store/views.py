"""A job as the store answers for it: its row and its items' outcomes, never the images' bytes."""

from __future__ import annotations

from dataclasses import fields

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.store.model import JobItemView, JobView
from server.store.schema import ItemStatus, Job, JobItem

# JobView's fields are the jobs table's columns of the same names, the failed count, and the items.
_COMPUTED = ("items", "images_failed")
_JOB_COLUMNS = [Job.__table__.c[field.name] for field in fields(JobView) if field.name not in _COMPUTED]


async def job_view(
    connection: AsyncConnection, job_id: str, owner: str, items: tuple[int, int] | None
) -> JobView | None:
    """The job, or None when ``owner`` has none of that id (another's job does not exist); with
    its items from ``items`` = (offset, limit), in order."""
    row = (await connection.execute(select(*_JOB_COLUMNS).where(Job.id == job_id, Job.owner == owner))).one_or_none()
    if row is None:
        return None
    failed = (
        await connection.execute(
            select(func.count())
            .select_from(JobItem)
            .where(JobItem.job_id == job_id, JobItem.status == ItemStatus.FAILED)
        )
    ).scalar_one()
    item_views: list[JobItemView] = []
    if items is not None:
        offset, limit = items
        rows = await connection.execute(
            select(JobItem.item_index, JobItem.filename, JobItem.status, JobItem.result, JobItem.error)
            .where(JobItem.job_id == job_id)
            .order_by(JobItem.item_index)
            .offset(offset)
            .limit(limit)
        )
        item_views = [
            JobItemView(index=index, filename=filename, status=status.value, result=result, error=error)
            for index, filename, status, result, error in rows
        ]
    return JobView(**row._mapping, images_failed=failed, items=item_views)
