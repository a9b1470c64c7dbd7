"""One configuration object for the server, shared by the CLI and the Python API.

Each field is declared once, here, with its default and its ``inferd serve`` flag (see
server/options.py): the parser and the config it builds both come from these fields, in
this order, which is also the order ``inferd serve --help`` lists them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from inferd.server.options import MIB, NEGATIVE_IS_NONE, NOT, TUPLE, option

# Triton's default: gRPC messages up to INT32_MAX bytes each way.
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1


@dataclass(slots=True)
class ServerConfig:
    model_repository: Path | None = field(
        default=None,  # None: the bundled demo repository
        metadata=option(
            "--model-repository",
            "<DIR>/<model>/config.pbtxt and <DIR>/<model>/<version>/model.onnx "
            "(default: the bundled demo repository)",
            type=Path,
            metavar="DIR",
        ),
    )
    # Triton's model control: none (load everything at start), explicit (load_models at
    # start, then the load/unload RPCs) or poll (follow the repository's changes).
    model_control_mode: str = field(
        default="none",
        metadata=option(
            "--model-control-mode",
            "none: load every model at start, no changes later; explicit: load the "
            "--load-model models at start, then clients load and unload models "
            "(RepositoryModelLoad/Unload); poll: load every model, then follow the repository "
            "(new, removed and changed models and versions) every --repository-poll-secs "
            "(%(default)s)",
            choices=("none", "explicit", "poll"),
        ),
    )
    load_models: tuple[str, ...] = field(
        default=(),  # ("*",): all
        metadata=option(
            "--load-model",
            "explicit mode: load this model at start; repeat for more; '*' loads them all",
            action="append",
            metavar="NAME",
            convert=TUPLE,
        ),
    )
    repository_poll_secs: float = field(
        default=15.0,
        metadata=option(
            "--repository-poll-secs",
            "poll mode: how often to look for repository changes (%(default)s)",
            type=float,
            metavar="SECONDS",
        ),
    )
    host: str = field(
        default="127.0.0.1", metadata=option("--host", "TCP address to bind (%(default)s)")
    )
    grpc_port: int | None = field(
        default=8001,  # None: no TCP listener (Unix socket only); 0: any free port
        metadata=option(
            "--grpc-port",
            "TCP port; 0 picks a free one, -1 disables TCP (%(default)s)",
            type=int,
            convert=NEGATIVE_IS_NONE,
        ),
    )
    unix_socket: Path | None = field(
        default=None,  # for sidecars: unix:<path>
        metadata=option(
            "--unix-socket",
            "also listen on this Unix domain socket (clients dial unix:PATH)",
            type=Path,
            metavar="PATH",
        ),
    )
    max_message_bytes: int = field(
        default=DEFAULT_MAX_MESSAGE_BYTES,
        metadata=option(
            "--max-message-size",
            "largest gRPC message either way (%(default)s)",
            type=int,
            metavar="BYTES",
        ),
    )
    max_concurrent_rpcs: int = field(
        default=4096,
        metadata=option(
            "--max-concurrent-rpcs",
            "RPCs in flight before new ones get RESOURCE_EXHAUSTED (%(default)s)",
            type=int,
        ),
    )
    grpc_front: str = field(
        default="auto",
        metadata=option(
            "--grpc-front",
            "the gRPC server: 'threads' (grpc's synchronous server, ModelInfer on its "
            "handler threads; one process only), 'asyncio' (grpc.aio on the event loop), "
            "or 'auto': threads in one process, asyncio in front processes (%(default)s)",
            choices=("auto", "threads", "asyncio"),
        ),
    )
    grpc_threads: int = field(
        default=16,
        metadata=option(
            "--grpc-threads",
            "handler threads of --grpc-front threads: the RPCs it runs at once, open "
            "streams included; more wait their turn (%(default)s)",
            type=int,
            metavar="N",
        ),
    )
    grace_period_s: float = field(
        default=30.0,
        metadata=option(
            "--grace-period",
            "how long in-flight requests may finish after SIGTERM (%(default)s)",
            type=float,
            metavar="SECONDS",
        ),
    )
    metrics_port: int | None = field(
        default=8002,  # None: off; 0: any free port
        metadata=option(
            "--metrics-port",
            "Prometheus metrics at http://HOST:PORT/metrics; 0 picks a free port (%(default)s)",
            type=int,
            off_flag="--no-metrics",
            off_help="do not serve Prometheus metrics",
        ),
    )
    trace_exporter: str | None = field(
        default=None,  # None: OTEL_TRACES_EXPORTER decides
        metadata=option(
            "--trace-exporter",
            "OpenTelemetry traces (needs inferd[tracing]); OTLP endpoint, protocol and "
            "headers come from the OTEL_EXPORTER_OTLP_* variables (default: "
            "OTEL_TRACES_EXPORTER, else none)",
            choices=("none", "console", "otlp"),
        ),
    )
    trace_rate: float | None = field(
        default=None,  # None: OTEL_TRACES_SAMPLER decides
        metadata=option(
            "--trace-rate",
            "fraction of requests traced, 0..1; requests whose client span was sampled are "
            "always traced (default: OTEL_TRACES_SAMPLER, else 1.0)",
            type=float,
            metavar="FRACTION",
        ),
    )
    # Off so a busy port fails loudly; the supervisor turns it on for its front processes.
    reuse_port: bool = field(
        default=False,
        metadata=option(
            "--reuse-port",
            "set SO_REUSEPORT so several servers can share the port (off: a busy port fails)",
            action="store_true",
        ),
    )
    # >= 2: a supervisor, one engine process and this many gRPC front processes sharing
    # the port (SO_REUSEPORT); 1: everything in this process.
    frontends: int = field(
        default=1,
        metadata=option(
            "--frontends",
            "gRPC front processes sharing the port; 2 or more starts a supervisor, one "
            "engine process (models, batching, statistics, /metrics) and N front processes "
            "(gRPC, decoding) that pass tensors over 64 KiB through shared memory "
            "(%(default)s: everything in one process)",
            type=int,
            metavar="N",
        ),
    )
    ring_bytes: int = field(
        default=64 * 1024 * 1024,  # each shared-memory ring, per front and direction
        metadata=option(
            "--frontend-ring-mib",
            "with --frontends >= 2: each front process's shared-memory ring per "
            "direction, in /dev/shm; requests wait for room (until their deadline) when it is "
            "full (%(default)s)",
            type=int,
            metavar="MIB",
            convert=MIB,
        ),
    )
    exit_on_engine_failure: bool = field(
        default=False,  # a dead engine stops the server (for Kubernetes)
        metadata=option(
            "--exit-on-engine-failure",
            "with --frontends >= 2: stop the server when the engine process dies, for an "
            "orchestrator to restart (default: restart the engine, with backoff)",
            action="store_true",
        ),
    )
    use_uvloop: bool = field(
        default=True,
        metadata=option(
            "--no-uvloop",
            "use asyncio's own event loop instead of uvloop",
            action="store_true",
            convert=NOT,
        ),
    )
    # Triton's system shared memory: clients on this machine register /dev/shm objects.
    allow_client_shm: bool = field(
        default=False,
        metadata=option(
            "--allow-client-shm",
            "let clients register POSIX shared memory (/dev/shm) for inputs and outputs, "
            "Triton's system shared memory; only for clients trusted on this machine (off)",
            action="store_true",
        ),
    )
    # sys.setswitchinterval, process-wide, applied once the models are loaded. None: 0.5 ms
    # when a model has GPU instances, else Python's own (see GPU_GIL_SWITCH_INTERVAL_S).
    gil_switch_interval_s: float | None = field(
        default=None,
        metadata=option(
            "--gil-switch-interval",
            "how long a thread holds the GIL while another waits (Python's sys."
            "setswitchinterval; default: 0.0005 when a model has GPU instances, so instance "
            "threads hand GPU batches back promptly while the event loop is busy, else "
            "Python's 0.005, which serves CPU models faster)",
            type=float,
            metavar="SECONDS",
        ),
    )
    log_level: str = field(
        default="info",
        metadata=option(
            "--log-level",
            "log messages of this level and above (%(default)s)",
            choices=("debug", "info", "warning", "error"),
        ),
    )

    @property
    def threads_front(self) -> bool:
        """Whether this process's gRPC front is the threads front (``--grpc-front``)."""
        return self.grpc_front == "threads" or (self.grpc_front == "auto" and self.frontends == 1)

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
