"""A front process: the gRPC servicers over a RemoteEngineClient, sharing the port with
the other front processes (SO_REUSEPORT)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from inferd.server.app import InferenceServer
from inferd.server.config import ServerConfig
from inferd.server.ipc.events import FrontReady, send_event
from inferd.server.ipc.process import prepare_child, run_loop
from inferd.server.ipc.remote_client import RemoteEngineClient
from inferd.server.ipc.shared_memory_mirror import MirroredSharedMemoryRegistry


@dataclass(frozen=True, slots=True)
class FrontRuntime:
    socket_path: Path  # the engine process's
    owner_pid: int  # the supervisor's
    front_id: int
    epoch: int  # this front's incarnation (restarts count up)
    port: int  # resolved by the supervisor, which holds it for the server's lifetime


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
        # No model threads here: a GPU engine's short switch interval would only cost.
        gil_switch_interval_s=config.gil_switch_interval_s or sys.getswitchinterval(),
    )


def front_main(config: ServerConfig, runtime: FrontRuntime, events: Connection) -> None:
    """The spawned front process's entry point; tells the supervisor ("ready", serving,
    failed) on ``events`` once it serves."""
    prepare_child(f"front-{runtime.front_id}", config.log_level, runtime.owner_pid)
    engine = RemoteEngineClient(runtime.socket_path, runtime.front_id, runtime.epoch)
    shared_memory = MirroredSharedMemoryRegistry(
        engine, config.allow_client_shm, config.max_message_bytes
    )
    server = InferenceServer(
        front_config(config, runtime.port), engine=engine, shared_memory=shared_memory
    )
    engine.on_readiness = server.engine_readiness

    async def started(server: InferenceServer) -> None:
        send_event(events, FrontReady(*await server.model_counts()))

    run_loop(server.serve(started), config.use_uvloop)
