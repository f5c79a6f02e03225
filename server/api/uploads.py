"""Pull image bytes out of a request: multipart form fields or a raw ``image/*`` body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from model_contract.errors import ErrorKind, ServiceError

RAW_BODY_TYPES = ("image/", "application/octet-stream")


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


@asynccontextmanager
async def multipart_form(
    request: Request, *, max_files: int, max_fields: int, too_many: str | None
) -> AsyncIterator[FormData]:
    """The parsed form, closed on leaving. One file more than ``max_files`` stops the parse at
    that file's headers, before its bytes are read; with ``too_many``, that is a 413
    ``too_many_images`` saying so (else Starlette's 400: one file was asked for)."""
    try:
        form = await request.form(max_files=max_files, max_fields=max_fields)
    except HTTPException as exc:
        if too_many is not None and str(exc.detail).startswith("Too many files"):
            raise ServiceError(ErrorKind.TOO_MANY_IMAGES, too_many) from None
        raise
    try:
        yield form
    finally:
        await form.close()


async def _form_files(request: Request, field: str, max_files: int, too_many: str | None) -> list[bytes]:
    async with multipart_form(request, max_files=max_files, max_fields=max_files, too_many=too_many) as form:
        uploads = [v for v in form.getlist(field) if isinstance(v, UploadFile)]
        if not uploads:
            present = ", ".join(sorted(set(form.keys()))) or "none"
            raise ServiceError(
                ErrorKind.MISSING_FILE,
                f"multipart field {field!r} with an image file is required (fields sent: {present})",
            )
        return [await upload.read() for upload in uploads]


async def single_image(request: Request) -> bytes:
    content_type = _content_type(request)
    if content_type == "multipart/form-data":
        return (await _form_files(request, "file", max_files=1, too_many=None))[0]
    if content_type.startswith(RAW_BODY_TYPES):
        return await request.body()
    raise ServiceError(
        ErrorKind.UNSUPPORTED_MEDIA_TYPE,
        f"send multipart/form-data with a 'file' field, or the image itself as image/*; got {content_type or 'none'}",
    )


def require_multipart(request: Request, how: str) -> None:
    if _content_type(request) != "multipart/form-data":
        raise ServiceError(ErrorKind.UNSUPPORTED_MEDIA_TYPE, how)


async def many_images(request: Request, max_files: int) -> list[bytes]:
    require_multipart(request, "send multipart/form-data with one 'files' field per image")
    return await _form_files(request, "files", max_files, too_many=f"at most {max_files} images per request")
