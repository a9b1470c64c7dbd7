"""The ``inferd`` command: serve a model repository, and talk to a running server."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inferd.server.config import ServerConfig

_DEFAULTS = ServerConfig()
_DEFAULT_URL = "127.0.0.1:8001"


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a model repository over gRPC",
        description="Serve a Triton-layout model repository over the Open Inference (KServe "
        "v2) gRPC protocol. Without --model-repository, serves the bundled demo models.",
    )
    serve.add_argument(
        "--model-repository",
        type=Path,
        metavar="DIR",
        help="<DIR>/<model>/config.pbtxt and <DIR>/<model>/<version>/model.onnx "
        "(default: the bundled demo repository)",
    )
    serve.add_argument(
        "--model-control-mode",
        choices=["none", "explicit", "poll"],
        default=_DEFAULTS.model_control_mode,
        help="none: load every model at start, no changes later; explicit: load the "
        "--load-model models at start, then clients load and unload models "
        "(RepositoryModelLoad/Unload); poll: load every model, then follow the repository "
        "(new, removed and changed models and versions) every --repository-poll-secs "
        "(%(default)s)",
    )
    serve.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: load this model at start; repeat for more; '*' loads them all",
    )
    serve.add_argument(
        "--repository-poll-secs",
        type=float,
        default=_DEFAULTS.repository_poll_secs,
        metavar="SECONDS",
        help="poll mode: how often to look for repository changes (%(default)s)",
    )
    serve.add_argument("--host", default=_DEFAULTS.host, help="TCP address to bind (%(default)s)")
    serve.add_argument(
        "--grpc-port",
        type=int,
        default=_DEFAULTS.grpc_port,
        help="TCP port; 0 picks a free one, -1 disables TCP (%(default)s)",
    )
    serve.add_argument(
        "--unix-socket",
        type=Path,
        metavar="PATH",
        help="also listen on this Unix domain socket (clients dial unix:PATH)",
    )
    serve.add_argument(
        "--max-message-size",
        type=int,
        default=_DEFAULTS.max_message_bytes,
        metavar="BYTES",
        help="largest gRPC message either way (%(default)s)",
    )
    serve.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=_DEFAULTS.max_concurrent_rpcs,
        help="RPCs in flight before new ones get RESOURCE_EXHAUSTED (%(default)s)",
    )
    serve.add_argument(
        "--grace-period",
        type=float,
        default=_DEFAULTS.grace_period_s,
        metavar="SECONDS",
        help="how long in-flight requests may finish after SIGTERM (%(default)s)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=_DEFAULTS.metrics_port,
        help="Prometheus metrics at http://HOST:PORT/metrics; 0 picks a free port (%(default)s)",
    )
    serve.add_argument("--no-metrics", action="store_true", help="do not serve Prometheus metrics")
    serve.add_argument(
        "--trace-exporter",
        choices=["none", "console", "otlp"],
        help="OpenTelemetry traces (needs inferd[tracing]); OTLP endpoint, protocol and "
        "headers come from the OTEL_EXPORTER_OTLP_* variables (default: "
        "OTEL_TRACES_EXPORTER, else none)",
    )
    serve.add_argument(
        "--trace-rate",
        type=float,
        metavar="FRACTION",
        help="fraction of requests traced, 0..1; requests whose client span was sampled are "
        "always traced (default: OTEL_TRACES_SAMPLER, else 1.0)",
    )
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="set SO_REUSEPORT so several servers can share the port (off: a busy port fails)",
    )
    serve.add_argument(
        "--frontends",
        type=int,
        default=_DEFAULTS.frontends,
        metavar="N",
        help="gRPC front processes sharing the port; 2 or more starts a supervisor, one "
        "engine process (models, batching, statistics, /metrics) and N front processes "
        "(gRPC, decoding) that pass tensors over 64 KiB through shared memory "
        "(%(default)s: everything in one process)",
    )
    serve.add_argument(
        "--frontend-ring-mib",
        type=int,
        default=_DEFAULTS.ring_bytes // 2**20,
        metavar="MIB",
        help="with --frontends >= 2: each front process's shared-memory ring per "
        "direction, in /dev/shm; requests wait for room (until their deadline) when it is "
        "full (%(default)s)",
    )
    serve.add_argument(
        "--exit-on-engine-failure",
        action="store_true",
        help="with --frontends >= 2: stop the server when the engine process dies, for an "
        "orchestrator to restart (default: restart the engine, with backoff)",
    )
    serve.add_argument(
        "--no-uvloop", action="store_true", help="use asyncio's own event loop instead of uvloop"
    )
    serve.add_argument(
        "--allow-client-shm",
        action="store_true",
        help="let clients register POSIX shared memory (/dev/shm) for inputs and outputs, "
        "Triton's system shared memory; only for clients trusted on this machine (off)",
    )
    serve.add_argument(
        "--gil-switch-interval",
        type=float,
        default=_DEFAULTS.gil_switch_interval_s,
        metavar="SECONDS",
        help="how long a thread holds the GIL while another waits (Python's sys."
        "setswitchinterval; default: 0.0005 when a model has GPU instances, so instance "
        "threads hand GPU batches back promptly while the event loop is busy, else "
        "Python's 0.005, which serves CPU models faster)",
    )
    serve.add_argument(
        "--log-level",
        default=_DEFAULTS.log_level,
        choices=["debug", "info", "warning", "error"],
        help="(%(default)s)",
    )


def _serve(args: argparse.Namespace) -> int:
    from inferd.server.app import run

    config = ServerConfig(
        model_repository=args.model_repository,
        model_control_mode=args.model_control_mode,
        load_models=tuple(args.load_model),
        repository_poll_secs=args.repository_poll_secs,
        host=args.host,
        grpc_port=None if args.grpc_port < 0 else args.grpc_port,
        unix_socket=args.unix_socket,
        max_message_bytes=args.max_message_size,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        grace_period_s=args.grace_period,
        reuse_port=args.reuse_port,
        metrics_port=None if args.no_metrics else args.metrics_port,
        trace_exporter=args.trace_exporter,
        trace_rate=args.trace_rate,
        log_level=args.log_level,
        use_uvloop=not args.no_uvloop,
        gil_switch_interval_s=args.gil_switch_interval,
        allow_client_shm=args.allow_client_shm,
        frontends=args.frontends,
        ring_bytes=args.frontend_ring_mib * 2**20,
        exit_on_engine_failure=args.exit_on_engine_failure,
    )
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from inferd.engines import EngineError

    if config.frontends < 1 or config.ring_bytes < 2**20:
        logging.getLogger("inferd.server").error(
            "--frontends must be >= 1 and --frontend-ring-mib >= 1"
        )
        return 2
    try:
        return run(config)
    except (OSError, EngineError, ValueError) as exc:
        logging.getLogger("inferd.server").error("%s", exc)
        return 1


def _models(args: argparse.Namespace) -> int:
    from inferd.clients import Client

    with Client(args.url) as client:
        for model in client.repository_index():
            # Model control lists models never loaded with no state at all, as Triton does.
            line = f"{model.name}\t{model.version or '-'}\t{model.state or 'NOT LOADED'}"
            print(f"{line}\t{model.reason}" if model.reason else line)
    return 0


def _parse_input(spec: str) -> tuple[str, object]:
    name, sep, values = spec.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--input wants NAME=VALUES, got {spec!r}")
    try:
        parsed = json.loads(values)
    except json.JSONDecodeError:
        parsed = [value.strip() for value in values.split(",")]
    return name, parsed


def _infer(args: argparse.Namespace) -> int:
    from inferd.clients import Client
    from inferd.protos.datatypes import NUMPY_DTYPES

    with Client(args.url) as client:
        metadata = client.model_metadata(args.model, args.model_version)
        declared = {tensor.name: tensor for tensor in metadata.inputs}
        inputs = {}
        for name, values in args.input:
            if name not in declared:
                print(
                    f"model '{args.model}' has no input '{name}' (inputs: {', '.join(declared)})",
                    file=sys.stderr,
                )
                return 2
            tensor = declared[name]
            if tensor.datatype == "BYTES":
                array = np.array(values, dtype=np.object_)
                array = np.vectorize(lambda v: str(v).encode(), otypes=[object])(array)
            else:
                array = np.array(values, dtype=NUMPY_DTYPES[tensor.datatype])
            # A batched model's inputs take a leading batch dimension: add one of 1.
            if len(tensor.shape) == array.ndim + 1 and tensor.shape[0] == -1:
                array = array[np.newaxis, ...]
            inputs[name] = array
        outputs = client.infer(
            args.model, inputs, outputs=args.output or None, version=args.model_version
        )
    printable = {
        name: np.vectorize(lambda v: v.decode("utf-8", "replace"), otypes=[object])(value).tolist()
        if value.dtype == np.object_
        else value.tolist()
        for name, value in outputs.items()
    }
    print(json.dumps(printable, indent=2))
    return 0


def _demo_repository(args: argparse.Namespace) -> int:
    from inferd.engines.demo.repository import build_demo_repository

    path = build_demo_repository(args.directory)
    print(
        f"wrote the demo model repository to {path}; serve it with:\n"
        f"  inferd serve --model-repository {path}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferd",
        description="inferd: a gRPC inference server speaking the Open Inference (KServe v2) "
        "protocol, wire-compatible with Triton's clients and model repositories.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)

    models = commands.add_parser("models", help="list a running server's models and states")
    models.add_argument("-u", "--url", default=_DEFAULT_URL, help="server (%(default)s)")

    infer = commands.add_parser(
        "infer",
        help="send one inference request to a running server",
        description="Send one request and print the outputs as JSON. Datatypes and shapes "
        "come from the model's metadata; a batched model gets a batch of one. Example: "
        "inferd infer simple --input INPUT0=[1,2,...] --input INPUT1=[...]",
    )
    infer.add_argument("model")
    infer.add_argument(
        "--input",
        type=_parse_input,
        action="append",
        required=True,
        metavar="NAME=VALUES",
        help="a JSON list (nested for several dims) or comma-separated values; repeat per input",
    )
    infer.add_argument("--output", action="append", metavar="NAME", help="only these outputs")
    infer.add_argument("--model-version", default="", help="(default: the latest)")
    infer.add_argument("-u", "--url", default=_DEFAULT_URL, help="server (%(default)s)")

    # Listed here for --help; main() hands `inferd bench ...` to inferd.bench.cli whole.
    commands.add_parser("bench", help="load-test a model (inferd bench --help for options)")

    demo = commands.add_parser(
        "demo-repository", help="write the bundled demo model repository to a directory"
    )
    demo.add_argument("directory", type=Path, help="a new or empty directory")
    return parser


_COMMANDS = {
    "serve": _serve,
    "models": _models,
    "infer": _infer,
    "demo-repository": _demo_repository,
}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        from inferd.bench.cli import main as bench

        return bench(arguments[1:])
    args = build_parser().parse_args(arguments)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.command == "serve":
            raise
        from inferd.clients import InferdError

        if isinstance(exc, InferdError | ValueError):
            print(f"inferd {args.command}: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
