"""``grpc.health.v1.Health`` for inferd.

The stubs are inferd's own (``inferd.protos.health_pb2``, in inferd's private descriptor
pool), not grpcio-health-checking's: that package's gencode demands a protobuf release
that tritonclient's pins can rule out, and inferd must install beside any tritonclient.
On the wire the two are the same service.

grpcio-health-checking's servicer keeps ``Watch`` streams open forever; an open watch
is an in-flight RPC, so a graceful stop would wait out the whole grace period for it
(gRPC's own client-side health checking holds exactly such a watch). Here, ``drain()``
reports NOT_SERVING to every watcher and then ends their streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from inferd.protos import health_pb2, health_pb2_grpc

# The generated enum: a type to mypy (the stubs), an int-valued wrapper at run time.
ServingStatus: TypeAlias = "health_pb2.HealthCheckResponse.ServingStatus"
SERVING: ServingStatus = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: ServingStatus = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_SERVICE_DESCRIPTOR = health_pb2.DESCRIPTOR.services_by_name["Health"]


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self._status: dict[str, ServingStatus] = {}
        self._changed = asyncio.Condition()
        self._draining = False

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: ServingStatus | None = None
        async with self._changed:
            while True:
                status = self._status.get(
                    request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                )
                if status != last:
                    yield health_pb2.HealthCheckResponse(status=status)
                    last = status
                if self._draining:
                    return
                await self._changed.wait()

    async def set(self, service: str, status: ServingStatus) -> None:
        async with self._changed:
            if not self._draining:
                self._status[service] = status
                self._changed.notify_all()

    async def drain(self) -> None:
        """Every service NOT_SERVING from now on; open watches get that and end."""
        async with self._changed:
            self._draining = True
            self._status = dict.fromkeys(self._status, NOT_SERVING)
            self._changed.notify_all()
