"""The gRPC front door: one ``grpc.aio`` server with the inference service, health and
reflection, listening on the configured addresses over the server's front services.

Health says SERVING only while the engine is ready and no drain has begun; ``drain``
turns it NOT_SERVING, ends health watches, runs every call received before it and
refuses later ones with UNAVAILABLE (``drain.py`` says how), then stops the server.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from inferd.protos import grpc_service_pb2_grpc
from inferd.server.config import ServerConfig
from inferd.server.grpc.drain import DrainGate, FrontListeners, newest_server_id
from inferd.server.grpc.health import NOT_SERVING, SERVING, HealthServicer
from inferd.server.grpc.reflection import INFERENCE_SERVICE, enable_reflection
from inferd.server.grpc.servicer import InferenceServicer
from inferd.server.services import FrontServices

logger = logging.getLogger("inferd.server")


def _grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", int(config.reuse_port)),
        # Triton's clients keep connections alive with pings and no data; never punish that.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 1000),
        # gRPC core keeps calls the Python server has not picked up yet in a backlog and,
        # past 1000 of them, drops some at random with a bare CANCELLED (a client reads
        # that as its own cancellation; inferd never sees the call). A burst reaches that
        # long before max_concurrent_rpcs, so the backlog gets the same bound.
        ("grpc.server.max_pending_requests", config.max_concurrent_rpcs),
        ("grpc.server.max_pending_requests_hard_limit", config.max_concurrent_rpcs),
    ]


class GrpcFront:
    def __init__(
        self,
        config: ServerConfig,
        services: FrontServices,
        listeners: FrontListeners | None = None,  # None: the only front on its port
    ) -> None:
        self.config = config
        self._services = services
        self._health = HealthServicer()
        self._gate = DrainGate(listeners or FrontListeners())
        self._server: grpc.aio.Server | None = None
        self._engine_ready = False
        self._draining = False
        self._health_update: asyncio.Task[None] | None = None
        self.addresses: list[str] = []

    async def start(self) -> None:
        """Listen (health NOT_SERVING until the engine is ready); raises OSError
        naming the address when one cannot be bound."""
        server = grpc.aio.server(
            options=_grpc_options(self.config),
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        self._gate.server_id = newest_server_id()
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._services, self._gate), server
        )
        self._health.add_to_server(server)
        enable_reflection(server)
        for address in self.config.addresses():
            self.addresses.append(_bind(server, address))
        await self._update_health()
        await server.start()
        self._gate.listeners.set(True)
        self._server = server
        logger.info("listening on %s", ", ".join(self.addresses))

    async def set_engine_ready(self, ready: bool) -> None:
        """The engine came or went (it may live in another process): health follows."""
        self._engine_ready = ready
        await self._update_health()

    def engine_readiness(self, ready: bool) -> None:
        """``set_engine_ready`` as a callback, for a remote engine's connection events."""
        self._health_update = asyncio.get_running_loop().create_task(self.set_engine_ready(ready))

    async def _update_health(self) -> None:
        serving = self._engine_ready and not self._draining
        for service in ("", INFERENCE_SERVICE):
            await self._health.set(service, SERVING if serving else NOT_SERVING)

    async def drain(self) -> None:
        """Not ready; every call received so far is answered, later ones are refused
        (UNAVAILABLE), all within the grace period; then the server stops."""
        deadline = time.monotonic() + self.config.grace_period_s
        self._draining = True
        self._services.stop_serving()
        if self._server is None:
            return
        requests = self._services.requests
        self._gate.begin(requests.in_progress)
        await self._health.drain()
        await self._gate.wait(lambda: requests.in_progress, deadline)
        await self._gate.stop(self._server, max(0.0, deadline - time.monotonic()))
        self._server = None


def _bind(server: grpc.aio.Server, address: str) -> str:
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        port, reason = 0, str(exc)
    else:
        reason = "the address is in use or not available"
    if port == 0:
        raise OSError(f"cannot listen on {address}: {reason}")
    if address.startswith("unix:"):
        return address
    host = address.rsplit(":", 1)[0]
    return f"{host}:{port}"
