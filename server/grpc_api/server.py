"""imgserve's gRPC server: ``grpc.aio`` on ``IMGSERVE_GRPC_PORT``, in the same process and event
loop as HTTP and over the same app: its service, admission and gatekeeper (``app.state``).

Its limits are HTTP's, where gRPC has a knob for them: the message size is the body limit, the
metadata size the header limit, the handshake the header timeout, an idle connection the
keep-alive timeout, connections and calls in progress this process's share of the connection
limit. With ``--workers``, every worker listens on the port with SO_REUSEPORT, and the kernel
spreads connections over them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import FastAPI
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from model_contract.errors import ErrorKind, ServiceError
from server.gatekeeper import Access
from server.grpc_api import inference_pb2 as pb
from server.grpc_api.calls import Unary, ignoring, reading
from server.grpc_api.guard import Context, Guard
from server.grpc_api.health import SERVICE as HEALTH
from server.grpc_api.health import ServingHealth
from server.grpc_api.servicer import InferenceServicer
from server.grpc_api.streams import MAX_STREAMS, StreamSlots
from server.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
# The reflection service answers from the stubs' own pool (server/grpc_api/regenerate.py says
# why it is not the default one); health and reflection are described there too.
for _module in (health_pb2, reflection_pb2):
    pb.POOL.AddSerializedFile(_module.DESCRIPTOR.serialized_pb)


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _options(settings: Settings, reuse_port: bool) -> list[tuple[str, Any]]:
    http = settings.http
    return [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", settings.limits.max_body_bytes),
        ("grpc.max_metadata_size", http.max_header_bytes),
        ("grpc.absolute_max_metadata_size", http.max_header_bytes),
        ("grpc.server_handshake_timeout_ms", round(http.header_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", round(http.keep_alive_timeout_s * 1000)),
        ("grpc.max_allowed_incoming_connections", http.max_connections),
        # Per connection: one client cannot hold every call slot with one connection's streams.
        ("grpc.max_concurrent_streams", min(100, http.max_connections)),
    ]


def _inference_handlers(
    servicer: InferenceServicer, guard: Guard, probes: Access, timeout_s: float
) -> grpc.GenericRpcHandler:
    """Every method served client-streaming (``calls.py``): admitted, then its message read."""

    def unary(name: str, access: Access, handler: Unary, response: Any) -> grpc.RpcMethodHandler[Any, Any]:
        what = response.DESCRIPTOR.name.removesuffix("Response") + "Request"
        guarded = guard.wrap(f"/{SERVICE}/{name}", access, reading(handler, timeout_s, what))
        return grpc.stream_unary_rpc_method_handler(guarded, response_serializer=response.SerializeToString)

    def blind(name: str, access: Access, handler: Unary, response: Any) -> grpc.RpcMethodHandler[Any, Any]:
        guarded = guard.wrap(f"/{SERVICE}/{name}", access, ignoring(handler))
        return grpc.stream_unary_rpc_method_handler(guarded, response_serializer=response.SerializeToString)

    s, client, admin = servicer, Access.CLIENT, Access.ADMIN
    # ModelInfer reads its message itself: between admission and the read it takes a request slot.
    infer = grpc.stream_unary_rpc_method_handler(guard.wrap(f"/{SERVICE}/ModelInfer", client, s.model_infer))
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ServerLive": blind("ServerLive", probes, s.server_live, pb.ServerLiveResponse),
            "ServerReady": blind("ServerReady", probes, s.server_ready, pb.ServerReadyResponse),
            "ModelReady": unary("ModelReady", client, s.model_ready, pb.ModelReadyResponse),
            "ServerMetadata": blind("ServerMetadata", client, s.server_metadata, pb.ServerMetadataResponse),
            "ModelMetadata": unary("ModelMetadata", client, s.model_metadata, pb.ModelMetadataResponse),
            "ModelInfer": infer,
            "ModelConfig": unary("ModelConfig", client, s.model_config, pb.ModelConfigResponse),
            "ModelStatistics": unary("ModelStatistics", client, s.model_statistics, pb.ModelStatisticsResponse),
            "RepositoryIndex": unary("RepositoryIndex", admin, s.repository_index, pb.RepositoryIndexResponse),
            "RepositoryModelLoad": unary(
                "RepositoryModelLoad", admin, s.repository_model_load, pb.RepositoryModelLoadResponse
            ),
            "RepositoryModelUnload": unary(
                "RepositoryModelUnload", admin, s.repository_model_unload, pb.RepositoryModelUnloadResponse
            ),
        },
    )


def reflection_handlers(services: tuple[str, ...], guard: Guard, streams: StreamSlots) -> grpc.GenericRpcHandler:
    """Server reflection over the stubs' pool, behind the guard (public: discoverability, as
    /docs) and a stream slot, each request parsed here: one that does not parse ends the stream
    INVALID_ARGUMENT (gRPC's own parsing says UNKNOWN, with a traceback)."""
    servicer = reflection.aio.ReflectionServicer(services, pool=pb.POOL)

    async def info(requests: AsyncIterator[bytes], context: Context) -> None:
        async def decoded() -> AsyncIterator[Any]:
            async for request in requests:
                try:
                    yield reflection_pb2.ServerReflectionRequest.FromString(request)
                except DecodeError:
                    raise ServiceError(ErrorKind.BAD_REQUEST, "the message is not a ServerReflectionRequest") from None

        with streams.held():
            async for response in servicer.ServerReflectionInfo(decoded(), context):
                await context.write(response)

    name = f"/{reflection.SERVICE_NAME}/ServerReflectionInfo"
    method = grpc.stream_stream_rpc_method_handler(
        guard.wrap(name, Access.PUBLIC, info),
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(reflection.SERVICE_NAME, {"ServerReflectionInfo": method})


class GrpcFrontend:
    def __init__(self, app: FastAPI, settings: Settings, *, reuse_port: bool) -> None:
        """``app`` must have started: its service exists once its lifespan has begun."""
        self._app = app
        self._settings = settings
        self._reuse_port = reuse_port
        self._server: grpc.aio.Server | None = None
        self._health: ServingHealth | None = None
        self._stopping: asyncio.Future[None] | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Listen on ``settings.grpc_port``; raises if the port cannot be bound."""
        settings, state = self._settings, self._app.state
        service = state.service
        server = grpc.aio.server(
            options=_options(settings, self._reuse_port), maximum_concurrent_rpcs=settings.http.max_connections
        )
        guard = Guard(state.gatekeeper, state.metrics, access_log=settings.access_log, tracing=state.tracing)
        probes = Access.PUBLIC if settings.public_probes else Access.CLIENT
        servicer = InferenceServicer(
            service, state.admission, body_timeout_s=settings.http.body_timeout_s, server_version=self._app.version
        )
        timeout_s = settings.http.body_timeout_s
        server.add_generic_rpc_handlers([_inference_handlers(servicer, guard, probes, timeout_s)])
        # Watch and reflection streams last as long as their clients want: a few, not every call slot.
        streams = StreamSlots(max(1, min(MAX_STREAMS, settings.http.max_connections // 4)))
        self._health = ServingHealth(lambda: service.readiness().ready)
        server.add_generic_rpc_handlers([self._health.handlers(guard, probes, streams, timeout_s)])
        if settings.docs:  # discoverability, as /docs and /openapi.json
            names = (SERVICE, HEALTH, reflection.SERVICE_NAME)
            server.add_generic_rpc_handlers([reflection_handlers(names, guard, streams)])
        address = listen_address(settings.host, settings.grpc_port)
        self.port = server.add_insecure_port(address)
        await self._health.start()
        await server.start()
        self._server = server
        log.info("gRPC on %s", address)

    def begin_drain(self) -> None:
        """From now on, new calls are refused (UNAVAILABLE) and health says NOT_SERVING; calls in
        progress get the drain timeout, then are cancelled. ``stopped`` waits for the end."""
        if self._server is None or self._stopping is not None:
            return
        server, health = self._server, self._health
        grace = self._settings.drain_timeout_s

        async def drain() -> None:
            if health is not None:
                await health.drain()
            await server.stop(grace)

        self._stopping = asyncio.ensure_future(drain())

    async def stopped(self) -> None:
        self.begin_drain()
        if self._stopping is not None:
            await self._stopping
