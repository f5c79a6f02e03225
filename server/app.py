"""The app factory: explicit dependencies in, a FastAPI app out; nothing runs at import."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from batching.clock import Clock, MonotonicClock
from server.admission import Admission, Budget
from server.api.access import DOCS_PATHS, METRICS_PATHS, PROBE_PATHS, AccessControl, TrustedHosts
from server.api.admit import AdmitRequests, Uploads
from server.api.body_deadline import BodyDeadline
from server.api.error_handlers import install_error_handlers
from server.api.job_routes import router as jobs_router
from server.api.middleware import RequestMetrics
from server.api.request_log import RequestLog
from server.api.responses import OrjsonResponse
from server.api.routes import router
from server.api.tfserving_routes import router as tfserving_router
from server.api.tracing import TraceRequests
from server.api.v2_routes import router as v2_router
from server.api_keys import ApiKeys
from server.cpu_budget import CpuBudgets
from server.gatekeeper import Gatekeeper
from server.hooks import PredictionHooks
from server.jobs.lifecycle import open_jobs
from server.local_models import LocalModels, build_registry
from server.metrics import Metrics
from server.rate_limit import RateLimiter
from server.runtimes import load_runtime
from server.runtimes.base import RuntimeFactory
from server.service import ClassificationService
from server.serving import ModelBackend
from server.settings import Settings
from server.tracing import Tracing, tracing_from_environment
from server.work_pool import WorkPool

BackendFactory = Callable[[Metrics, Clock], ModelBackend]
"""Makes the app's model backend, given the app's metrics and clock."""


def create_app(
    settings: Settings,
    runtime_factory: RuntimeFactory = load_runtime,
    clock: Clock | None = None,
    *,
    backend: BackendFactory | None = None,
    admission: Admission | None = None,
    rate_limiter: RateLimiter | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """The composition root. By default the models live in this process (a registry over
    ``settings.model_repository``, run by ``runtime_factory``); a front-end worker passes
    ``backend`` (the model owner's catalog) and the ``admission`` and ``rate_limiter`` it
    shares with the other workers. ``clock`` times request deadlines and every model's batcher
    alike (tests pass a manual one)."""
    clock = clock or MonotonicClock()
    tracing = tracing or tracing_from_environment()
    metrics = Metrics()
    models = (backend or _local_backend(settings, runtime_factory))(metrics, clock)
    admission = admission or Admission(settings.limits)
    admission.requests.watch(metrics.requests_in_progress.inc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A parse peaks at about 25x its JSON body's size (nested lists of Python objects).
        worker_memory = max(1 << 30, 64 * settings.limits.max_body_bytes)
        pool = WorkPool(threads=settings.decode_threads or os.cpu_count() or 1, worker_memory_bytes=worker_memory)
        app.state.service = service = ClassificationService(models.catalog, admission, pool, metrics, clock, tracing)
        # In-process hooks (entry points imgserve.prediction_callbacks): never delay a request.
        app.state.hooks = hooks = PredictionHooks.from_entry_points(metrics.hook_drops)
        jobs = None
        try:
            jobs = await open_jobs(settings, service, metrics, hooks.notify)  # None without a result store
            app.state.jobs = None if jobs is None else jobs.jobs
            # Load in the background: /health answers at once, /ready turns true after warm-up.
            await models.start()
            yield
        finally:
            # Ordered: let the other protocols' calls and the jobs in progress end (they use the
            # models), stop loading and polling, drain each model's queue, release models, then threads.
            for drained in app.state.before_close:
                await drained()
            if jobs is not None:
                await jobs.close(settings.drain_timeout_s)
            await asyncio.to_thread(hooks.close)
            await models.close()
            await asyncio.to_thread(pool.shutdown)

    app = FastAPI(
        title="imgserve",
        summary="High-throughput image classification with dynamic batching.",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        docs_url="/docs" if settings.docs else None,
        redoc_url="/redoc" if settings.docs else None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.before_close = []  # awaited at shutdown before the models close: gRPC's drain
    app.state.tracing = tracing
    app.state.jobs = None  # the result store's jobs, once the lifespan has opened it (when configured)
    # What every protocol admits by: the gRPC services (server/grpc_api) take them from here.
    app.state.admission = admission
    app.state.gatekeeper = gatekeeper = Gatekeeper(
        admin_token=settings.admin_token.get_secret_value() if settings.admin_token else None,
        api_keys=ApiKeys(settings.api_keys_file) if settings.api_keys_file else None,
        rate_limiter=rate_limiter or RateLimiter(settings.rate_limit),
        cpu_budgets=CpuBudgets(),
        cpu_limit=settings.cpu_limit,
    )
    app.include_router(router)
    app.include_router(v2_router)
    app.include_router(tfserving_router)
    app.include_router(jobs_router)
    install_error_handlers(app)
    _add_middleware(app, settings, admission, metrics, gatekeeper, tracing)
    return app


def _local_backend(settings: Settings, runtime_factory: RuntimeFactory) -> BackendFactory:
    def local(metrics: Metrics, clock: Clock) -> ModelBackend:
        registry = build_registry(settings, runtime_factory, metrics, clock)
        return LocalModels(registry, settings.repository_poll_s, clock)

    return local


def _public_paths(settings: Settings) -> frozenset[str]:
    public = set(DOCS_PATHS)
    if settings.public_probes:
        public |= PROBE_PATHS
    if settings.public_metrics:
        public |= METRICS_PATHS
    return frozenset(public)


def _add_middleware(
    app: FastAPI, settings: Settings, admission: Admission, metrics: Metrics, gatekeeper: Gatekeeper, tracing: Tracing
) -> None:
    """Cheapest refusal first. Each added layer wraps the ones before it, so this runs
    bottom-up: the request's id, its trace span (when tracing is on), metrics, trusted host, CORS,
    access control, admission, then the body deadline."""
    app.add_middleware(BodyDeadline, timeout_s=settings.http.body_timeout_s)
    jobs = settings.jobs
    uploads = (
        {"/v1/jobs": Uploads(jobs.max_body_bytes, Budget("bytes of job uploads", jobs.max_body_bytes_in_flight))}
        if jobs.enabled
        else {}
    )
    app.add_middleware(AdmitRequests, admission=admission, uploads=uploads)
    app.add_middleware(AccessControl, gatekeeper=gatekeeper, public_paths=_public_paths(settings))
    if settings.cors_origins:
        # Outside access control: a browser's preflight carries no credentials.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-Timeout-Ms",
                           "Inference-Header-Content-Length", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )  # fmt: skip
    app.add_middleware(TrustedHosts, hosts=settings.trusted_hosts)
    app.add_middleware(RequestMetrics, metrics=metrics)  # counts every refusal too
    if tracing.enabled:
        app.add_middleware(TraceRequests, tracing=tracing)
    app.add_middleware(RequestLog, access_log=settings.access_log)  # outermost: every line has the request's id
