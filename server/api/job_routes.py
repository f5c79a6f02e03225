"""``/v1/jobs``: images classified in the background, and ``/v1/results``: a request's answer
fetched again by its id. Parse, call ``server/jobs/manager.py``, render."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from model_contract.errors import ErrorKind, ServiceError
from server.api.deps import settings_of
from server.api.responses import OrjsonResponse
from server.api.uploads import multipart_form, require_multipart
from server.gatekeeper import current_client
from server.jobs.manager import MOST_RESULTS, Jobs
from server.jobs.render import job_body

router = APIRouter(tags=["jobs"])

_JOB_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "callback_url": {"type": "string", "description": "POSTed the job when it ends, signed"},
                        "top_k": {"type": "integer", "minimum": 1, "default": 5},
                        "model": {"type": "string", "description": "default: the server's default model"},
                    },
                }
            }
        },
    }
}
_FIELDS = ("callback_url", "top_k", "model")


def _jobs(request: Request) -> Jobs:
    jobs: Jobs | None = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise ServiceError(ErrorKind.NOT_FOUND, "this server keeps no jobs or results (IMGSERVE_JOBS__ENABLED)")
    return jobs


def _top_k(value: str | None) -> int:
    if value is None:
        return 5
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise ServiceError(ErrorKind.INVALID_PARAMETER, "top_k must be a whole number")
    return int(value)


@router.post("/v1/jobs", status_code=202, openapi_extra=_JOB_BODY)
async def submit_job(request: Request) -> Response:
    """Queue images to classify in the background; answers at once with the job's id."""
    jobs, settings = _jobs(request), settings_of(request)
    require_multipart(request, "send multipart/form-data with one 'files' field per image")
    await jobs.admit(current_client())  # a client at its limit is told so before it uploads
    most = settings.jobs.max_images_per_job
    too_many = f"at most {most} images in one job"
    async with multipart_form(request, max_files=most, max_fields=len(_FIELDS), too_many=too_many) as form:
        fields = {name: form.get(name) for name in _FIELDS}
        if any(value is not None and not isinstance(value, str) for value in fields.values()):
            raise ServiceError(ErrorKind.INVALID_PARAMETER, f"{', '.join(_FIELDS)} are text fields, not files")
        text = {name: value for name, value in fields.items() if isinstance(value, str)}
        # Everything but the images first: a refused job costs no copy of them.
        submission = jobs.check(
            current_client(),
            model=text.get("model") or settings.default_model,
            top_k=_top_k(text.get("top_k")),
            callback_url=text.get("callback_url") or None,
        )
        uploads = [v for v in form.getlist("files") if isinstance(v, UploadFile)]
        images = [await upload.read() for upload in uploads]
        names = [upload.filename or "" for upload in uploads]
    job_id = await jobs.submit(submission, images, names)
    status_url = f"/v1/jobs/{job_id}"
    body = {"job_id": job_id, "status": "queued", "status_url": status_url}
    return OrjsonResponse(body, status_code=202, headers={"Location": status_url})


Offset = Query(0, ge=0, le=2**31 - 1, description="The first image whose result to return.")
Limit = Query(100, ge=0, le=MOST_RESULTS, description="How many images' results to return (0: none).")


@router.get("/v1/jobs/{job_id}")
async def get_job(request: Request, job_id: str, offset: int = Offset, limit: int = Limit) -> Response:
    """The job's status, counts and timestamps, and the results of images ``offset`` on."""
    return OrjsonResponse(job_body(await _jobs(request).view(job_id, current_client(), offset, limit), offset))


@router.delete("/v1/jobs/{job_id}")
async def cancel_job(request: Request, job_id: str) -> Response:
    """Cancel a job that has not finished (a finished one is answered as it is)."""
    return OrjsonResponse(job_body(await _jobs(request).cancel(job_id, current_client())))


@router.get("/v1/results/{request_id:path}")
async def get_result(request: Request, request_id: str) -> Response:
    """A /v1/classify answer, again, by the request's X-Request-ID (when the server keeps results)."""
    return OrjsonResponse(await _jobs(request).result(request_id, current_client()))
