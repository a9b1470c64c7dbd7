"""MLServer (Seldon's, from PyPI) as a peer server beside inferd.

MLServer runs in a virtual environment of its own (``ensure_mlserver``: built once per
MLServer version in inferd's cache directory), with a tiny onnxruntime runtime this
module writes next to the model settings, serving the ONNX files of inferd's demo
repository under the same names and tensor names (``identity_fp32``: INPUT0 -> OUTPUT0;
``cnn_classifier``: INPUT -> OUTPUT), so the same client requests work on both.

``serve`` starts MLServer as a subprocess (gRPC and HTTP on 127.0.0.1, free ports) and
logs ``listening on ADDRESS`` and ``ready: mlserver`` once gRPC ModelReady answers true
for every model, as ``bench._harness.PinnedServer`` expects; SIGTERM stops it. MLServer
inherits the launcher's CPU affinity, and so do its parallel workers. ``--config
default`` keeps MLServer's settings (one parallel worker process, debug access logs,
metrics); ``--config fast`` turns those off (``parallel_workers: 0``, ``debug: false``,
``metrics_endpoint: null``).

``compare`` alternates inferd, MLServer default and MLServer fast, each pinned to one
core, under the same closed loop on ``identity_fp32`` from the other core, and counts
server CPU over each server's whole process tree. Bounded: each window stops after
--seconds, start-up waits at most --start-timeout.

    python -m inferd.bench.peers.mlserver serve --config fast --grpc-port 0
    python -m inferd.bench.peers.mlserver compare --elements 16 --concurrency 64 \
        --rounds 2 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

MLSERVER_VERSION = "1.7.1"
CONFIGS = ("default", "fast")
# Model name -> (input, output): the names inferd's demo repository uses.
MODELS = {"identity_fp32": ("INPUT0", "OUTPUT0"), "cnn_classifier": ("INPUT", "OUTPUT")}
BENCH_MODEL = "identity_fp32"
_COMPLETE = "inferd-complete"  # written last: its text is the requirements installed

# The custom runtime, written beside the model settings. MLServer has its own runtimes
# for other frameworks but none for ONNX that we rely on; this one runs a model file with
# onnxruntime on one intra-op thread without spinning, as inferd does on one core.
_RUNTIME_MODULE = "inferd_onnx_runtime"
_RUNTIME_SOURCE = """\
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            await get_model_uri(self._settings), options, providers=["CPUExecutionProvider"]
        )
        self._output_names = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        results = self._session.run(self._output_names, feed)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, array)
                for name, array in zip(self._output_names, results)
            ],
        )
"""


def cache_root() -> Path:
    """inferd's cache directory, as ``inferd.engines.demo.repository`` chooses it."""
    if explicit := os.environ.get("INFERD_CACHE_DIR"):
        return Path(explicit)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "inferd"
    return Path.home() / ".cache" / "inferd"


def _requirements() -> list[str]:
    # The same onnxruntime and numpy as inferd's environment, so only the server differs.
    return [
        f"mlserver=={MLSERVER_VERSION}",
        f"onnxruntime=={metadata.version('onnxruntime')}",
        f"numpy=={metadata.version('numpy')}",
        # MLServer 1.7.1's parallel workers fail to start with uvloop >= 0.22
        # (SeldonIO/MLServer#2286: "There is no current event loop" in a worker).
        "uvloop==0.21.0",
    ]


def ensure_mlserver(cache: Path) -> Path:
    """The python executable of a virtual environment holding MLServer, built on first use.

    One environment per MLServer and Python version under ``cache``; rebuilt when the
    pinned requirements change. A lock file serializes concurrent builders.
    """
    name = f"mlserver-{MLSERVER_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}"
    venv = cache / name
    python = venv / "bin" / "python"
    wanted = "\n".join(_requirements()) + "\n"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        complete = venv / _COMPLETE
        if complete.is_file() and complete.read_text() == wanted and python.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        print(f"building {venv} ({', '.join(_requirements())})", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        install = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*install, *_requirements()], check=True, timeout=1200, stdout=sys.stderr)
        frozen = subprocess.run(
            [str(python), "-m", "pip", "freeze"], check=True, timeout=120,
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        (venv / "inferd-freeze.txt").write_text(frozen)
        complete.write_text(wanted)
    return python


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_repository(
    root: Path, config: str, grpc_port: int, http_port: int, metrics_port: int
) -> None:
    """MLServer's settings, the runtime and one model-settings.json per model, in ``root``."""
    from inferd.engines.demo.repository import cached_demo_repository

    demo = cached_demo_repository()
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_port": metrics_port,
    }
    if config == "fast":
        settings |= {"parallel_workers": 0, "debug": False, "metrics_endpoint": None}
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    (root / f"{_RUNTIME_MODULE}.py").write_text(_RUNTIME_SOURCE)
    for model in MODELS:
        folder = root / model
        folder.mkdir()
        model_settings = {
            "name": model,
            "implementation": f"{_RUNTIME_MODULE}.OnnxModel",
            "parameters": {"uri": str(demo / model / "1" / "model.onnx")},
        }
        (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: MLServer gets SIGTERM if the launcher dies without stopping it.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _all_ready(address: str) -> bool:
    from inferd.clients import Client, InferdError

    client = Client(address, timeout=2.0)
    try:
        return all(client.is_model_ready(model) for model in MODELS)
    except InferdError:
        return False
    finally:
        client.close()


def serve(config: str, grpc_port: int, cache: Path, start_timeout: float) -> int:
    python = ensure_mlserver(cache)
    grpc_port = grpc_port or _free_port()
    http_port, metrics_port = _free_port(), _free_port()
    address = f"127.0.0.1:{grpc_port}"
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="inferd-mlserver-") as work:
        root = Path(work)
        write_repository(root, config, grpc_port, http_port, metrics_port)
        log_path = root / "mlserver.log"
        with open(log_path, "w") as log:
            # Logs go to a file, not to the pipe the benchmark reads, as a deployment's would.
            process = subprocess.Popen(
                [str(python), "-m", "mlserver.cli.main", "start", str(root)],
                cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(root)}, preexec_fn=_die_with_parent,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + start_timeout
            while not _all_ready(address):
                if process.poll() is not None or stop.is_set() or time.monotonic() > deadline:
                    tail = log_path.read_text()[-4000:]
                    print(f"MLServer did not become ready:\n{tail}", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            print(f"listening on {address}", file=sys.stderr)
            print(f"ready: mlserver {MLSERVER_VERSION} ({config})", file=sys.stderr, flush=True)
            while not stop.wait(0.5):
                if process.poll() is not None:
                    print(f"MLServer exited with {process.returncode}", file=sys.stderr)
                    return 1
            return 0
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    # Its own session: anything it left behind (a parallel worker) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        children[int(fields[1])].append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, ()))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its live descendants, with what each has reaped of its own
    children (utime + stime + cutime + cstime), so a worker that exits still counts."""
    ticks = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(field) for field in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _check_outputs(address: str, cnn_reference: tuple[np.ndarray, np.ndarray]) -> None:
    """The server returns what inferd's models return, for the same requests."""
    from inferd.clients import Client

    with Client(address, timeout=10.0) as client:
        data = np.arange(16, dtype=np.float32).reshape(1, 16)
        echoed = client.infer("identity_fp32", {"INPUT0": data})["OUTPUT0"]
        if not np.array_equal(echoed, data):
            raise RuntimeError(f"{address}: identity_fp32 returned {echoed!r}")
        image, expected = cnn_reference
        scores = client.infer("cnn_classifier", {"INPUT": image})["OUTPUT"]
        if scores.shape != expected.shape or not np.allclose(scores, expected, atol=1e-4):
            raise RuntimeError(f"{address}: cnn_classifier returned {scores!r}, not {expected!r}")


def compare(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    from inferd.bench._harness import (
        PinnedServer,
        closed_loop,
        markdown_table,
    )
    from inferd.engines.demo.repository import cached_demo_repository

    repository = cached_demo_repository()
    python = ensure_mlserver(args.cache)  # before any server starts: a build takes minutes
    mlserver_version = subprocess.run(
        [str(python), "-c", "import mlserver; print(mlserver.__version__)"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    image = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    session = ort.InferenceSession(
        str(repository / "cnn_classifier" / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    cnn_reference = (image, session.run(None, {"INPUT": image})[0])

    os.sched_setaffinity(0, {args.client_core})
    inputs = {"INPUT0": np.random.default_rng(0).random((1, args.elements), dtype=np.float32)}

    def mlserver(config: str) -> PinnedServer:
        return PinnedServer(
            ["inferd.bench.peers.mlserver", "serve", "--config", config, "--grpc-port", "0",
             "--cache", str(args.cache), "--start-timeout", str(args.start_timeout)],
            args.server_core,
        )  # fmt: skip

    servers: dict[str, Callable[[], PinnedServer]] = {
        "inferd (identity_fp32)": lambda: PinnedServer.inferd(repository, args.server_core),
        **{
            f"MLServer {mlserver_version}, {config}": functools.partial(mlserver, config)
            for config in CONFIGS
        },
    }
    rates: dict[str, list[float]] = defaultdict(list)
    server_us: dict[str, list[float]] = defaultdict(list)  # process-tree CPU per request
    server_cpu: dict[str, list[float]] = defaultdict(list)
    load_cpu: dict[str, list[float]] = defaultdict(list)
    processes: dict[str, int] = {}
    for round_ in range(args.rounds):
        for name, start in servers.items():
            server = start()
            try:
                if round_ == 0:
                    _check_outputs(server.address, cnn_reference)
                tree = process_tree(server.pid)
                processes[name] = len(tree)
                for member in tree:
                    affinity = os.sched_getaffinity(member)
                    if affinity != {args.server_core}:
                        print(f"warning: {name}: pid {member} runs on {affinity}", file=sys.stderr)
                cpu_before, began = tree_cpu_seconds(server.pid), time.perf_counter()
                measurement = asyncio.run(
                    closed_loop(
                        server.address, server.pid, BENCH_MODEL, inputs, args.concurrency,
                        args.seconds, name,
                    )
                )  # fmt: skip
                cpu = tree_cpu_seconds(server.pid) - cpu_before
                elapsed = time.perf_counter() - began
            finally:
                server.stop()
            rates[name].append(measurement.rate)
            server_us[name].append(cpu / (measurement.requests + 1) * 1e6)  # +1: the warm-up
            server_cpu[name].append(cpu / elapsed)
            load_cpu[name].append(measurement.client_cpu or 0.0)
            print(f"{name}: {measurement.rate:,.0f} requests/s", file=sys.stderr, flush=True)
    inferd_rate = float(np.mean(next(iter(rates.values()))))
    rows = [
        [
            name, str(processes[name]), " / ".join(f"{rate:,.0f}" for rate in values),
            f"{np.mean(values):,.0f}", f"{inferd_rate / np.mean(values):.2f}",
            f"{np.mean(server_us[name]):.0f}", f"{np.mean(server_cpu[name]):.0%}",
            f"{np.mean(load_cpu[name]):.0%}",
        ]
        for name, values in rates.items()
    ]  # fmt: skip
    print(
        f"1x{args.elements} FP32 requests to {BENCH_MODEL}, concurrency {args.concurrency}, "
        f"server on core {args.server_core}, load on core {args.client_core}, "
        f"{args.seconds:g} s windows, {args.rounds} alternating rounds; "
        f"MLServer {mlserver_version} in {python.parent.parent}"
    )
    header = [
        "server", "processes", "requests/s per round", "mean", "ratio inferd / this",
        "server CPU µs per request", "server CPU", "load CPU",
    ]  # fmt: skip
    print(markdown_table(header, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache", type=Path, default=None, help="where MLServer's environment lives "
        "(default: inferd's cache directory)"
    )  # fmt: skip
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds (120)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run MLServer until SIGTERM")
    serve_parser.add_argument("--config", choices=CONFIGS, default="default")
    serve_parser.add_argument("--grpc-port", type=int, default=0, help="0: a free port")
    compare_parser = commands.add_parser("compare", help="inferd against MLServer")
    compare_parser.add_argument("--elements", type=int, default=16)
    compare_parser.add_argument("--concurrency", type=int, default=64)
    from inferd.bench._harness import add_pinning_arguments

    add_pinning_arguments(compare_parser, rounds=True)
    for sub in (serve_parser, compare_parser):
        # Accepted after the command too, as the harness passes them.
        sub.add_argument("--cache", type=Path, default=argparse.SUPPRESS)
        sub.add_argument("--start-timeout", type=float, default=argparse.SUPPRESS)
    args = parser.parse_args()
    args.cache = args.cache or cache_root()
    if args.command == "serve":
        sys.exit(serve(args.config, args.grpc_port, args.cache, args.start_timeout))
    compare(args)


if __name__ == "__main__":
    main()
