"""A front process: the gRPC front door over a RemoteEngineClient, sharing the port with
the other front processes (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path

from inferd.server.config import ServerConfig
from inferd.server.engine_host import tracing_from_config
from inferd.server.grpc.drain import FrontListeners
from inferd.server.grpc.front import GrpcFront
from inferd.server.ipc.events import FrontReady, send_event
from inferd.server.ipc.process import prepare_child
from inferd.server.ipc.remote_client import RemoteEngineClient
from inferd.server.ipc.shared_memory_mirror import MirroredSharedMemoryRegistry
from inferd.server.lifecycle import ShutdownSignals, run_loop
from inferd.server.model_control import ModelControl, ModelControlMode
from inferd.server.services import FrontServices

logger = logging.getLogger("inferd.server")


@dataclass(frozen=True, slots=True)
class FrontRuntime:
    socket_path: Path  # the engine process's
    owner_pid: int  # the supervisor's
    front_id: int
    epoch: int  # this front's incarnation (restarts count up)
    port: int  # resolved by the supervisor, which holds it for the server's lifetime
    listening: SynchronizedArray[int]  # which fronts listen on the port, one slot each


def front_config(config: ServerConfig, port: int) -> ServerConfig:
    """The server's config as one front process of several applies it."""
    return dataclasses.replace(
        config,
        grpc_port=port,
        reuse_port=True,
        metrics_port=None,  # the engine process serves /metrics: it has the statistics
        # The engine process polls the repository and loads the startup models. Fronts
        # only answer the load/unload RPCs, which poll mode refuses as none mode does.
        model_control_mode="none"
        if config.model_control_mode == "poll"
        else config.model_control_mode,
        load_models=(),
        # The threads front runs requests on the engine in its own process: fronts take
        # the asyncio one (check_config refuses an explicit threads front).
        grpc_front="asyncio",
    )


def front_main(config: ServerConfig, runtime: FrontRuntime, events: Connection) -> None:
    """The spawned front process's entry point; tells the supervisor FrontReady on
    ``events`` once it serves."""
    prepare_child(f"front-{runtime.front_id}", config.log_level, runtime.owner_pid)
    run_loop(_serve(front_config(config, runtime.port), runtime, events), config.use_uvloop)


async def _serve(config: ServerConfig, runtime: FrontRuntime, events: Connection) -> None:
    # No model threads here: only a switch interval the user asked for applies (a GPU
    # engine's short automatic one would only cost).
    if config.gil_switch_interval_s is not None:
        sys.setswitchinterval(config.gil_switch_interval_s)
    engine = RemoteEngineClient(runtime.socket_path, runtime.front_id, runtime.epoch)
    shared_memory = MirroredSharedMemoryRegistry(
        engine, config.allow_client_shm, config.max_message_bytes
    )
    tracing = tracing_from_config(config)
    control = ModelControl(
        engine,
        config.model_repository,
        ModelControlMode(config.model_control_mode),
        config.repository_poll_secs,
    )
    services = FrontServices(engine, shared_memory, tracing, control)
    front = GrpcFront(config, services, FrontListeners(runtime.listening, runtime.front_id))
    engine.on_readiness = front.engine_readiness
    signals = ShutdownSignals(config.grace_period_s)
    signals.install()
    try:
        await front.start()
        await engine.start()
        await front.set_engine_ready(engine.is_ready())
        send_event(events, FrontReady(*await services.model_counts()))
        await signals.wait()
    finally:
        await front.drain()
        shared_memory.close()  # after the drain: no request reads a region now
        await engine.close()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # exports what is buffered
        logger.info("stopped")
