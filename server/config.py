"""One configuration object for the server, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Triton's default: gRPC messages up to INT32_MAX bytes each way.
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1


@dataclass(slots=True)
class ServerConfig:
    model_repository: Path | None = None  # None: the bundled demo repository
    # Triton's model control: none (load everything at start), explicit (load_models at
    # start, then the load/unload RPCs) or poll (follow the repository's changes).
    model_control_mode: str = "none"
    load_models: tuple[str, ...] = ()  # explicit mode's startup models; ("*",): all
    repository_poll_secs: float = 15.0  # poll mode's period
    host: str = "127.0.0.1"
    grpc_port: int | None = 8001  # None: no TCP listener (Unix socket only); 0: any free port
    unix_socket: Path | None = None  # for sidecars: unix:<path>
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_concurrent_rpcs: int = 4096  # beyond this gRPC answers RESOURCE_EXHAUSTED
    grace_period_s: float = 30.0  # in-flight requests get this long after SIGTERM
    reuse_port: bool = False  # SO_REUSEPORT; off so a busy port fails loudly
    metrics_port: int | None = 8002  # Prometheus text at /metrics; None: off; 0: any free port
    trace_exporter: str | None = None  # none|console|otlp; None: OTEL_TRACES_EXPORTER decides
    trace_rate: float | None = None  # fraction traced; None: OTEL_TRACES_SAMPLER decides
    log_level: str = "info"
    use_uvloop: bool = True
    # sys.setswitchinterval, process-wide, applied once the models are loaded. None: 0.5 ms
    # when a model has GPU instances, else Python's own (see GPU_GIL_SWITCH_INTERVAL_S).
    gil_switch_interval_s: float | None = None
    # Triton's system shared memory: clients on this machine register /dev/shm objects.
    allow_client_shm: bool = False
    # >= 2: a supervisor, one engine process and this many gRPC front processes sharing
    # the port (SO_REUSEPORT); 1: everything in this process.
    frontends: int = 1
    ring_bytes: int = 64 * 1024 * 1024  # each shared-memory ring, per front and direction
    exit_on_engine_failure: bool = False  # a dead engine stops the server (for Kubernetes)

    def addresses(self) -> list[str]:
        addresses = []
        if self.grpc_port is not None:
            host = f"[{self.host}]" if ":" in self.host else self.host
            addresses.append(f"{host}:{self.grpc_port}")
        if self.unix_socket is not None:
            addresses.append(f"unix:{self.unix_socket}")
        if not addresses:
            raise ValueError("nothing to listen on: give a gRPC port or a Unix socket")
        return addresses
