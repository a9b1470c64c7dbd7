"""The one-process server: the engine host and the gRPC front door over it, and the
choice between that and ``--frontends N`` (a supervisor and its processes)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from inferd.server.allocator import tune_malloc
from inferd.server.config import ServerConfig
from inferd.server.engine_host import EngineHost
from inferd.server.grpc.front import GrpcFront
from inferd.server.lifecycle import ShutdownSignals, run_loop
from inferd.server.services import FrontServices

if TYPE_CHECKING:
    from inferd.server.tracing import Tracing

logger = logging.getLogger("inferd.server")


class InferenceServer:
    """An inferd server in this process; ``async with`` it in tests, ``serve()`` it in
    production. ``tracing`` replaces what the config asks for (a custom exporter)."""

    def __init__(self, config: ServerConfig, tracing: Tracing | None = None) -> None:
        self.config = config
        self._tracing = tracing
        self.host: EngineHost | None = None
        self.services: FrontServices | None = None
        self.front: GrpcFront | None = None

    @property
    def addresses(self) -> list[str]:
        return self.front.addresses if self.front is not None else []

    @property
    def metrics_port(self) -> int | None:
        return self.host.metrics_port if self.host is not None else None

    async def start(self) -> None:
        """Listen first (health NOT_SERVING while the models load), then load them."""
        self.host = EngineHost(self.config, self._tracing)  # bad flags: before binding
        self.services = self.host.front_services()
        self.front = GrpcFront(self.config, self.services)
        await self.front.start()
        await self.host.start()
        await self.front.set_engine_ready(self.host.engine.is_ready())

    async def stop(self) -> None:
        """Drain: no repository changes, not ready, no new RPCs, in-flight ones get the
        grace period; then release the models."""
        if self.host is not None:
            await self.host.stop_polling()
        if self.front is not None:
            await self.front.drain()
        if self.host is not None:
            await self.host.close()
        logger.info("stopped")

    async def __aenter__(self) -> InferenceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def serve(self) -> None:
        """Serve until a signal, then drain."""
        signals = ShutdownSignals(self.config.grace_period_s)
        signals.install()
        try:
            await self.start()
            assert self.services is not None
            serving, failed = await self.services.model_counts()
            logger.info("ready: %d model version(s) serving, %d failed to load", serving, failed)
            await signals.wait()
        finally:
            await self.stop()


def run(config: ServerConfig) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status."""
    if config.frontends > 1:
        from inferd.server.ipc.supervisor import Supervisor

        return Supervisor(config).run()
    tune_malloc()
    run_loop(InferenceServer(config).serve(), config.use_uvloop)
    return 0
