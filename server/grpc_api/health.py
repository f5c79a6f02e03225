"""``grpc.health.v1.Health``, so Kubernetes' gRPC probes (and grpc-health-probe) work: SERVING
while the server is ready (every served model warm), NOT_SERVING while it warms up or once it
drains. It answers for the whole server ("") and for ``inference.GRPCInferenceService``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from server.gatekeeper import Access
from server.grpc_api.calls import reading
from server.grpc_api.guard import Context, Guard, parsed
from server.grpc_api.streams import StreamSlots

SERVICE = "grpc.health.v1.Health"
SERVICES = ("", "inference.GRPCInferenceService")
"""What a client may ask the health of: the whole server, or the inference service."""
POLL_S = 0.5
"""How often readiness is looked at for Watch streams."""


class ServingHealth(health.aio.HealthServicer):  # type: ignore[misc]
    def __init__(self, ready: Callable[[], bool]) -> None:
        super().__init__()
        self._ready = ready
        self._task: asyncio.Task[None] | None = None

    def handlers(self, guard: Guard, access: Access, streams: StreamSlots, timeout_s: float) -> grpc.GenericRpcHandler:
        """The service's methods behind ``guard``, client-streaming as every method here
        (``calls.py``), each parsing its message itself: one that does not parse is
        INVALID_ARGUMENT (gRPC's own parsing says UNKNOWN). A Watch takes a stream slot."""

        async def check(request: bytes, context: Context) -> Any:
            await self._update()  # a probe sees readiness as it is now; watchers' changes within POLL_S
            return await super(ServingHealth, self).Check(parsed(health_pb2.HealthCheckRequest, request), context)

        async def watch(request: bytes, context: Context) -> Any:
            with streams.held():
                await self._update()  # the first answer is readiness as it is now
                return await super(ServingHealth, self).Watch(parsed(health_pb2.HealthCheckRequest, request), context)

        serialize = health_pb2.HealthCheckResponse.SerializeToString
        what = "HealthCheckRequest"
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Check": grpc.stream_unary_rpc_method_handler(
                    guard.wrap(f"/{SERVICE}/Check", access, reading(check, timeout_s, what)),
                    response_serializer=serialize,
                ),
                "Watch": grpc.stream_stream_rpc_method_handler(
                    guard.wrap(f"/{SERVICE}/Watch", access, reading(watch, timeout_s, what)),
                    response_serializer=serialize,
                ),
            },
        )

    async def start(self) -> None:
        await self._update()
        self._task = asyncio.create_task(self._follow(), name="grpc-health")

    async def drain(self) -> None:
        """NOT_SERVING from now on, whatever readiness says."""
        await self.stop()
        await self.enter_graceful_shutdown()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await self._update()

    async def _update(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self._ready() else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in SERVICES:
            await self.set(service, status)
