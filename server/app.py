"""The server's lifecycle: start, serve until a signal, drain, stop.

Signals only set a flag. The first SIGTERM/SIGINT turns health to NOT_SERVING, stops
accepting RPCs and gives in-flight ones ``grace_period_s`` to finish; a second signal
exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from inferd.engines import (
    EngineClient,
    EngineError,
    ErrorCode,
    InProcessEngineClient,
    ModelState,
)
from inferd.engines.client_memory.cuda import CudaSharedMemory
from inferd.engines.client_memory.system import SystemSharedMemoryRegistry
from inferd.engines.execution.executor import GPU_GIL_SWITCH_INTERVAL_S
from inferd.protos import grpc_service_pb2_grpc, model_config_pb2
from inferd.server.allocator import tune_malloc
from inferd.server.config import ServerConfig
from inferd.server.grpc.health import NOT_SERVING, SERVING, HealthServicer, ServingStatus
from inferd.server.grpc.reflection import INFERENCE_SERVICE, enable_reflection
from inferd.server.grpc.servicer import InferenceServicer
from inferd.server.metrics import MetricsServer
from inferd.server.model_control import ModelControl, ModelControlMode, startup_models

if TYPE_CHECKING:
    from inferd.server.tracing import Tracing

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


def resolve_repository(config: ServerConfig) -> Path:
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


class InferenceServer:
    """An inferd gRPC server; ``async with`` it in tests, ``serve()`` it in production."""

    def __init__(
        self,
        config: ServerConfig,
        engine: EngineClient | None = None,
        tracing: Tracing | None = None,
        shared_memory: SystemSharedMemoryRegistry | None = None,
    ) -> None:
        self.config = config
        self._engine = engine
        self._tracing = tracing
        self._server: grpc.aio.Server | None = None
        self._health = HealthServicer()
        self._servicer: InferenceServicer | None = None
        self._control: ModelControl | None = None
        self._shared_memory = shared_memory or SystemSharedMemoryRegistry(
            enabled=config.allow_client_shm, max_request_bytes=config.max_message_bytes
        )
        self.addresses: list[str] = []
        self._metrics: MetricsServer | None = None
        self.metrics_port: int | None = None
        self._should_exit = asyncio.Event()
        self._signals_received = 0
        self._engine_ready = False
        self._health_update: asyncio.Task[None] | None = None

    async def start(self) -> None:
        interval = self.config.gil_switch_interval_s
        if interval is not None and interval <= 0:  # a bad flag: before binding anything
            raise ValueError(f"the GIL switch interval must be > 0 seconds, got {interval}")
        if self._tracing is None:
            self._tracing = tracing_from_config(self.config)
        mode = ModelControlMode(self.config.model_control_mode)
        startup = startup_models(mode, self.config.load_models)  # bad flags: before binding
        repository = self.config.model_repository
        if self._engine is None:
            repository = resolve_repository(self.config)
            self._engine = InProcessEngineClient(
                repository, self._tracing, startup, cuda_shared_memory_of(self.config)
            )
        if isinstance(self._engine, InProcessEngineClient):
            share_region_names(self._shared_memory, self._engine.engine.cuda_shared_memory)
        self._control = ModelControl(
            self._engine, repository, mode, self.config.repository_poll_secs
        )
        self._servicer = InferenceServicer(
            self._engine, self._tracing, self._shared_memory, model_control=self._control
        )
        server = grpc.aio.server(
            options=_grpc_options(self.config),
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self._servicer, server)
        self._health.add_to_server(server)
        enable_reflection(server)
        for address in self.config.addresses():
            self.addresses.append(self._bind(server, address))
        await self._set_health(NOT_SERVING)
        await server.start()
        self._server = server
        logger.info("listening on %s", ", ".join(self.addresses))
        await self._control.start()
        await self._engine.start()
        self._control.start_polling()
        if self.config.metrics_port is not None:
            self._start_metrics()
        await apply_switch_interval(self.config, self._engine)
        self._engine_ready = self._engine.is_ready()
        await self._update_health()

    def engine_readiness(self, ready: bool) -> None:
        """The engine (in another process) came or went: health follows at once."""
        self._engine_ready = ready
        self._health_update = asyncio.get_running_loop().create_task(self._update_health())

    async def _update_health(self) -> None:
        serving = self._engine_ready and not self._should_exit.is_set()
        await self._set_health(SERVING if serving else NOT_SERVING)

    async def model_counts(self) -> tuple[int, int]:
        """(model versions serving, versions that failed to load)."""
        assert self._engine is not None
        index = await self._engine.repository_index(ready_only=False)
        return (
            sum(entry.state is ModelState.READY for entry in index),
            sum(entry.state is ModelState.UNAVAILABLE for entry in index),
        )

    def _start_metrics(self) -> None:
        assert self.config.metrics_port is not None
        if not isinstance(self._engine, InProcessEngineClient):
            raise ValueError("metrics need the engine in this process (its statistics)")
        engine = self._engine.engine  # scrapes run on the HTTP server's threads: no loop
        self._metrics = MetricsServer(
            lambda: engine.statistics("", None), self.config.host, self.config.metrics_port
        )
        self.metrics_port = self._metrics.start()
        logger.info("metrics on http://%s:%d/metrics", self.config.host, self.metrics_port)

    @staticmethod
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

    async def _set_health(self, status: ServingStatus) -> None:
        for service in ("", INFERENCE_SERVICE):
            await self._health.set(service, status)

    async def stop(self) -> None:
        """Drain: not ready, no new RPCs, in-flight ones get the grace period, then stop."""
        if self._control is not None:
            await self._control.stop()  # no repository polling while draining
        if self._servicer is not None:
            self._servicer.stop_serving()
        await self._health.drain()
        if self._server is not None:
            await self._server.stop(self.config.grace_period_s)
            self._server = None
        self._shared_memory.close()  # after the drain: no request reads a region now
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None
        if self._engine is not None:
            await self._engine.close()
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.shutdown)  # exports what is buffered
        logger.info("stopped")

    async def __aenter__(self) -> InferenceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _on_signal(self, signum: int) -> None:
        self._signals_received += 1
        if self._signals_received > 1:
            logger.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        logger.info(
            "%s: draining (up to %.0fs; send it again to exit now)",
            signal.Signals(signum).name,
            self.config.grace_period_s,
        )
        self._should_exit.set()

    async def serve(
        self, on_started: Callable[[InferenceServer], Awaitable[None]] | None = None
    ) -> None:
        """Serve until a signal. ``on_started`` replaces the "ready:" log line (a front
        process reports to its supervisor instead)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await self.start()
            if on_started is not None:
                await on_started(self)
            else:
                serving, failed = await self.model_counts()
                logger.info(
                    "ready: %d model version(s) serving, %d failed to load", serving, failed
                )
            await self._should_exit.wait()
        finally:
            await self.stop()


def cuda_shared_memory_of(config: ServerConfig) -> CudaSharedMemory:
    """The CUDA regions of the process that holds the models."""
    return CudaSharedMemory(config.allow_client_shm, max_request_bytes=config.max_message_bytes)


def share_region_names(system: SystemSharedMemoryRegistry, cuda: CudaSharedMemory) -> None:
    """One namespace for both kinds of region, as in Triton: a tensor names only its
    region, so a name registered as one kind cannot be registered as the other."""
    system.table.taken = cuda.table.__contains__
    cuda.table.taken = system.table.__contains__


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


def run(config: ServerConfig) -> int:
    """Serve until SIGINT/SIGTERM on uvloop where available, else asyncio's own loop;
    returns the exit status."""
    if config.frontends > 1:
        from inferd.server.ipc.supervisor import Supervisor

        return Supervisor(config).run()
    tune_malloc()
    server = InferenceServer(config)
    if config.use_uvloop:
        try:
            import uvloop
        except ImportError:
            logger.info("uvloop is not installed: using asyncio's event loop")
        else:
            uvloop.run(server.serve())
            return 0
    asyncio.run(server.serve())
    return 0
