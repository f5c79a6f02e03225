"""Routes: parse the request, call the service, serialize. Nothing else."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from model_contract.errors import ServiceError
from server.api import uploads
from server.api.deps import metrics_of, service_of, settings_of
from server.api.disconnect import unless_disconnected
from server.api.error_handlers import imgserve_body
from server.api.responses import OrjsonResponse
from server.gatekeeper import current_client
from server.request_context import request_id
from server.service import ItemOutcome

router = APIRouter()

TopK = Query(5, ge=1, description="How many classes to return, best first.")
TimeoutMs = Header(
    None,
    alias="X-Request-Timeout-Ms",
    gt=0,
    description="Shortens the server's deadline for this request; past it the answer is 504.",
)


def _seconds(timeout_ms: float | None) -> float | None:
    return None if timeout_ms is None else timeout_ms / 1000.0


_IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_IMAGES_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}


def _item_body(outcome: ItemOutcome) -> dict[str, Any]:
    if isinstance(outcome, ServiceError):
        return imgserve_body(outcome)
    return outcome.as_dict()


async def _classify(request: Request, model: str, top_k: int, timeout_ms: float | None) -> Response:
    data = await uploads.single_image(request)
    work = service_of(request).classify(data, model_name=model, k=top_k, timeout_s=_seconds(timeout_ms))
    body = (await unless_disconnected(request, work)).as_dict()
    rid = request_id.get() or ""
    request.app.state.hooks.notify(rid, body)  # queued for the hooks' threads: never waits
    jobs = request.app.state.jobs
    if jobs is not None:  # the result store keeps it, by the request's id, behind the answer
        jobs.remember(rid, current_client(), body, data)
    return OrjsonResponse(body)


@router.post("/v1/classify", openapi_extra=_IMAGE_BODY, tags=["classify"])
async def classify(request: Request, top_k: int = TopK, timeout_ms: float | None = TimeoutMs) -> Response:
    """Classify one image with the default model."""
    return await _classify(request, settings_of(request).default_model, top_k, timeout_ms)


@router.post("/v1/classify/batch", openapi_extra=_IMAGES_BODY, tags=["classify"])
async def classify_batch(request: Request, top_k: int = TopK, timeout_ms: float | None = TimeoutMs) -> Response:
    """Classify several images; each gets its own result or error, in order."""
    settings = settings_of(request)
    images = await uploads.many_images(request, settings.limits.max_images_per_request)
    work = service_of(request).classify_many(
        images, model_name=settings.default_model, k=top_k, timeout_s=_seconds(timeout_ms)
    )
    outcomes = await unless_disconnected(request, work)
    results = [_item_body(o) for o in outcomes]
    rid = request_id.get() or ""
    for index, (outcome, result) in enumerate(zip(outcomes, results, strict=True)):
        if not isinstance(outcome, ServiceError):
            request.app.state.hooks.notify(f"{rid}/{index}", result)
    return OrjsonResponse({"results": results})


@router.post("/v1/models/{name}/classify", openapi_extra=_IMAGE_BODY, tags=["classify"])
async def classify_with_model(
    request: Request, name: str, top_k: int = TopK, timeout_ms: float | None = TimeoutMs
) -> Response:
    """Classify one image with the named model."""
    return await _classify(request, name, top_k, timeout_ms)


@router.get("/v1/models", tags=["models"])
async def list_models(request: Request) -> Response:
    models = [
        {
            "name": m.name,
            "version": m.version,
            "ready": m.ready,
            "runtime": m.runtime,
            "input": m.manifest.input.model_dump(),
            "classes": len(m.manifest.labels),
            "max_batch_size": m.max_batch_size,
        }
        for m in service_of(request).models()
    ]
    return OrjsonResponse({"default": settings_of(request).default_model, "models": models})


@router.get("/health", tags=["health"])
async def health() -> Response:
    """Liveness: the process answers."""
    return OrjsonResponse({"status": "ok"})


@router.get("/ready", tags=["health"])
async def ready(request: Request) -> Response:
    """Readiness: every model is loaded and warmed up. Which models failed to load is shown;
    why is only in the log and the admin API (it names paths on this machine)."""
    readiness = service_of(request).readiness()
    body = {
        "ready": readiness.ready,
        "draining": readiness.draining,
        "models": readiness.models,
        "failed": readiness.failed,
        "repository_readable": readiness.repository_readable,
    }
    return OrjsonResponse(body, status_code=200 if readiness.ready else 503)


@router.get("/metrics", tags=["health"])
async def metrics(request: Request) -> Response:
    return Response(metrics_of(request).render(), media_type="text/plain; version=0.0.4; charset=utf-8")
