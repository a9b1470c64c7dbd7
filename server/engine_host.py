"""The engine side of a server, assembled once: used by the one-process server and by
the engine process of ``--frontends N`` alike.

It owns what lives where the models live: the engine and its model control (startup
loads, the poll loop), statistics served as Prometheus ``/metrics``, tracing, clients'
system and CUDA shared-memory registrations (one namespace of region names), and the
process's GIL switch interval. Building one checks the flags that can be wrong (before
any port is bound); ``start`` loads the models; ``close`` releases everything, after the
front doors have drained.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from inferd.engines import EngineClient, EngineError, ErrorCode, InProcessEngineClient
from inferd.engines.client_memory.cuda import CudaSharedMemory
from inferd.engines.client_memory.system import SystemSharedMemoryRegistry
from inferd.engines.execution.executor import GPU_GIL_SWITCH_INTERVAL_S
from inferd.protos import model_config_pb2
from inferd.server.config import ServerConfig
from inferd.server.metrics import MetricsServer
from inferd.server.model_control import ModelControl, ModelControlMode, startup_models
from inferd.server.services import FrontServices

if TYPE_CHECKING:  # opentelemetry is an optional extra: imported only when tracing is on
    from inferd.server.tracing import Tracing

logger = logging.getLogger("inferd.server")


def resolve_repository(config: ServerConfig) -> Path:
    """The repository to serve: the configured one (which must exist), else the demo
    repository, built into a cache directory on first use."""
    if config.model_repository is not None:
        if not config.model_repository.is_dir():  # fail before binding any port
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                f"model repository {config.model_repository} does not exist or is not a directory",
            )
        return config.model_repository
    from inferd.engines.demo.repository import cached_demo_repository

    path = cached_demo_repository()
    logger.info("no --model-repository given: serving the demo repository at %s", path)
    return path


def tracing_from_config(config: ServerConfig) -> Tracing | None:
    """Tracing from the flags or OTEL_* variables; None (off) unless asked for."""
    exporter = config.trace_exporter or os.environ.get("OTEL_TRACES_EXPORTER")
    if exporter in (None, "none"):
        return None
    try:
        from inferd.server import tracing
    except ImportError as exc:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"tracing needs OpenTelemetry ({exc.name} is missing): pip install 'inferd[tracing]'",
        ) from None
    settings = tracing.tracing_config(config.trace_exporter, config.trace_rate)
    if settings is None:
        return None
    logger.info(
        "tracing: %s exporter, one request in %s", settings.exporter, settings.rate or "none"
    )
    return tracing.Tracing(settings)


def check_switch_interval(config: ServerConfig) -> None:
    interval = config.gil_switch_interval_s
    if interval is not None and interval <= 0:
        raise ValueError(f"the GIL switch interval must be > 0 seconds, got {interval}")


class EngineHost:
    """``async with`` it, or ``start()`` and ``close()`` it around a front door's life.

    ``tracing`` replaces what the config asks for (tests, custom exporters);
    ``on_models_changed`` is awaited after every load and unload, before its caller
    hears back (the engine process tells its front processes there)."""

    def __init__(
        self,
        config: ServerConfig,
        tracing: Tracing | None = None,
        on_models_changed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        check_switch_interval(config)
        self.config = config
        self.tracing = tracing if tracing is not None else tracing_from_config(config)
        mode = ModelControlMode(config.model_control_mode)
        startup = startup_models(mode, config.load_models)
        repository = resolve_repository(config)
        limit = config.max_message_bytes  # what one request may read from client memory
        enabled = config.allow_client_shm
        self.cuda_shared_memory = CudaSharedMemory(enabled, max_request_bytes=limit)
        self.shared_memory = SystemSharedMemoryRegistry(enabled, max_request_bytes=limit)
        # One namespace for both kinds of region, as in Triton: a tensor names only its
        # region, so a name registered as one kind cannot be registered as the other.
        self.shared_memory.table.taken = self.cuda_shared_memory.table.__contains__
        self.cuda_shared_memory.table.taken = self.shared_memory.table.__contains__
        self.engine = InProcessEngineClient(
            repository, self.tracing, startup, self.cuda_shared_memory, on_models_changed
        )
        self.model_control = ModelControl(
            self.engine, repository, mode, config.repository_poll_secs
        )
        self._metrics: MetricsServer | None = None
        self.metrics_port: int | None = None

    def front_services(self) -> FrontServices:
        """What a front door in this process reaches: these very objects."""
        return FrontServices(self.engine, self.shared_memory, self.tracing, self.model_control)

    async def start(self) -> None:
        """Load the models (every one has loaded or failed when this returns), then
        follow the repository (poll mode), serve /metrics and set the GIL interval."""
        await self.model_control.start()
        await self.engine.start()
        self.model_control.start_polling()
        if self.config.metrics_port is not None:
            engine = self.engine.engine  # scrapes run on the HTTP server's threads: no loop
            self._metrics = MetricsServer(
                lambda: engine.statistics("", None), self.config.host, self.config.metrics_port
            )
            self.metrics_port = self._metrics.start()
            logger.info("metrics on http://%s:%d/metrics", self.config.host, self.metrics_port)
        await apply_switch_interval(self.config, self.engine)

    async def stop_polling(self) -> None:
        """No more repository changes: called as draining begins (idempotent)."""
        await self.model_control.stop()

    async def close(self) -> None:
        """Release everything; the front doors have drained, so no request is running."""
        await self.model_control.stop()
        self.shared_memory.close()
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None
        await self.engine.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # exports what is buffered

    async def __aenter__(self) -> EngineHost:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def apply_switch_interval(config: ServerConfig, engine: EngineClient) -> None:
    """The GIL switch interval for the process, once the models are known."""
    interval = config.gil_switch_interval_s
    if interval is None:
        if not await _serves_gpu_models(engine):
            return  # Python's own: CPU models serve faster with it
        interval = GPU_GIL_SWITCH_INTERVAL_S
    sys.setswitchinterval(interval)
    logger.info("GIL switch interval: %g s", interval)


async def _serves_gpu_models(engine: EngineClient) -> bool:
    gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
    for entry in await engine.repository_index(ready_only=True):
        config = engine.model_info(entry.name, int(entry.version)).config
        if any(group.kind == gpu for group in config.instance_group):
            return True
    return False
