"""The app factory: explicit dependencies in, a FastAPI app out; nothing runs at import."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from server.api.body_deadline import BodyDeadline
from server.api.error_handlers import install_error_handlers
from server.api.middleware import BodySizeLimit, RequestMetrics
from server.api.responses import OrjsonResponse
from server.api.routes import router
from server.api.tfserving_routes import router as tfserving_router
from server.api.v2_routes import router as v2_router
from server.metrics import Metrics
from server.registry import ModelRegistry
from server.runtimes import RuntimeOptions, load_runtime
from server.runtimes.base import RuntimeFactory
from server.service import ClassificationService
from server.settings import Settings

log = logging.getLogger(__name__)


async def _poll(registry: ModelRegistry, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await registry.reload()
        except Exception:
            log.exception("repository poll failed")


def create_app(settings: Settings, runtime_factory: RuntimeFactory = load_runtime) -> FastAPI:
    metrics = Metrics()
    registry = ModelRegistry(
        settings.model_repository,
        runtime_factory,
        RuntimeOptions(
            intra_op_threads=settings.inference_threads,
            preferred_runtime=settings.runtime,
            compute_dtype=settings.compute_dtype,
            device=settings.device,
        ),
        settings.batching,
        metrics,
        drain_timeout_s=settings.drain_timeout_s,
        max_model_bytes=settings.max_model_bytes,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        decode_pool = ThreadPoolExecutor(
            max_workers=settings.decode_threads or os.cpu_count() or 1, thread_name_prefix="decode"
        )
        app.state.service = ClassificationService(registry, settings.limits, decode_pool)
        # Load in the background: /health answers at once, /ready turns true after warm-up.
        background = [asyncio.create_task(registry.load_all(), name="load-models")]
        if settings.repository_poll_s > 0:
            background.append(asyncio.create_task(_poll(registry, settings.repository_poll_s), name="poll-repository"))
        try:
            yield
        finally:
            # Ordered: stop loading and polling, drain each model's queue, release models, then threads.
            for task in background:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            await registry.close()
            decode_pool.shutdown(wait=True)

    app = FastAPI(
        title="imgserve",
        summary="High-throughput image classification with dynamic batching.",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.include_router(router)
    app.include_router(v2_router)
    app.include_router(tfserving_router)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(BodyDeadline, timeout_s=settings.http.body_timeout_s)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: counts the 413s too
    return app
