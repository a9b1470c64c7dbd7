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
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from inferd.engines.client import InProcessEngineClient
from inferd.protos import grpc_service_pb2_grpc, health_pb2_grpc
from inferd.server.config import ServerConfig
from inferd.server.grpc.drain import DrainGate, FrontListeners, newest_server_id
from inferd.server.grpc.health import (
    HEALTH_SERVICE_DESCRIPTOR,
    NOT_SERVING,
    SERVING,
    HealthServicer,
)
from inferd.server.grpc.loop_bridge import LoopBridge, bridged
from inferd.server.grpc.reflection import (
    INFERENCE_SERVICE,
    REFLECTION_SERVICE_DESCRIPTOR,
    reflection_servicers,
)
from inferd.server.grpc.servicer import InferenceServicer
from inferd.server.grpc.threaded import ThreadedInferenceServicer
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
    """``config.threads_front`` picks the server: grpc's synchronous server whose handler
    threads run ModelInfer (``threaded.py``), or grpc.aio on this event loop."""

    def __init__(
        self,
        config: ServerConfig,
        services: FrontServices,
        listeners: FrontListeners | None = None,  # None: the only front on its port
    ) -> None:
        if config.grpc_threads < 1:
            raise ValueError(f"--grpc-threads must be at least 1, got {config.grpc_threads}")
        self.config = config
        self._services = services
        self._health = HealthServicer()
        self._gate = DrainGate(listeners or FrontListeners())
        self._stop: Callable[[float], Awaitable[None]] | None = None  # the server's stop
        self._threaded: ThreadedInferenceServicer | None = None
        self._engine_ready = False
        self._draining = False
        self._health_update: asyncio.Task[None] | None = None
        self.addresses: list[str] = []

    async def start(self) -> None:
        """Listen (health NOT_SERVING until the engine is ready); raises OSError
        naming the address when one cannot be bound."""
        if self.config.threads_front:
            server: grpc.Server | grpc.aio.Server = self._threads_server()
        else:
            server = self._asyncio_server()
        for address in self.config.addresses():
            self.addresses.append(_bind(server, address))
        await self._update_health()
        if isinstance(server, grpc.aio.Server):
            await server.start()
            self._stop = server.stop
        else:
            server.start()
            threads_server = server

            async def stop(grace_s: float) -> None:
                await asyncio.to_thread(threads_server.stop(grace_s).wait)

            self._stop = stop
        self._gate.listeners.set(True)
        logger.info("listening on %s", ", ".join(self.addresses))

    def _asyncio_server(self) -> grpc.aio.Server:
        server = grpc.aio.server(
            options=_grpc_options(self.config),
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        self._gate.server_id = newest_server_id()
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._services, self._gate), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for servicer, add in reflection_servicers():
            add(servicer, server)
        return server

    def _threads_server(self) -> grpc.Server:
        server = grpc.server(
            ThreadPoolExecutor(self.config.grpc_threads, thread_name_prefix="inferd-grpc"),
            options=_grpc_options(self.config),
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        self._gate.server_id = newest_server_id()
        bridge = LoopBridge(asyncio.get_running_loop())
        engine = self._services.engine
        self._threaded = ThreadedInferenceServicer(
            self._services,
            self._gate,
            bridge,
            engine.engine if isinstance(engine, InProcessEngineClient) else None,
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self._threaded, server)
        health_pb2_grpc.add_HealthServicer_to_server(
            bridged(self._health, HEALTH_SERVICE_DESCRIPTOR, bridge), server
        )
        for servicer, add in reflection_servicers():
            add(bridged(servicer, REFLECTION_SERVICE_DESCRIPTOR, bridge), server)
        return server

    def _in_progress(self) -> int:
        threaded = self._threaded.in_progress if self._threaded is not None else 0
        return self._services.requests.in_progress + threaded

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
        if self._stop is None:
            return
        self._gate.begin(self._in_progress())
        await self._health.drain()
        await self._gate.wait(self._in_progress, deadline)
        await self._gate.stop(self._stop, max(0.0, deadline - time.monotonic()))
        self._stop = None


def _bind(server: grpc.Server | grpc.aio.Server, address: str) -> str:
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
