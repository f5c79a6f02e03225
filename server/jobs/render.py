"""A job as JSON: what ``GET /v1/jobs/{id}`` answers and what its callback carries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from server.store.model import JobView


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def job_body(job: JobView, offset: int | None = None) -> dict[str, Any]:
    """The job; with ``offset``, the results of its items from there (the window it was read
    with). A callback carries no results: a job's can be megabytes; it says where they are."""
    body: dict[str, Any] = {
        "job_id": job.id,
        "status_url": f"/v1/jobs/{job.id}",
        "status": job.status.value,
        "model": job.model,
        "top_k": job.top_k,
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "images": {"total": job.images_total, "done": job.images_done, "failed": job.images_failed},
        "callback": None
        if job.callback_url is None
        else {
            "url": job.callback_url,
            "status": job.callback_status.value,
            "attempts": job.callback_attempts,
            "error": job.callback_error,
        },
    }
    if offset is not None:
        body["results_offset"] = offset
        body["results"] = [
            {"index": item.index, "filename": item.filename, "status": item.status}
            | ({"result": item.result} if item.result is not None else {})
            | ({"error": item.error} if item.error is not None else {})
            for item in job.items
        ]
    return body
