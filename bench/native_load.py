"""inferd against bare Python gRPC servers, under a native load generator (h2load).

The same comparison as ``bench/ceiling.py`` (inferd's ``identity_fp32`` against the echo
servicers of ``bench/peers/echo_servicer.py``, optionally MLServer), but the load comes
from h2load (Debian's ``nghttp2-client``), so that on a 2-core machine the client is not
the bottleneck. One ModelInfer message is framed once and replayed over h2c with prior
knowledge (h2load's default for an http:// URL): 8 connections x 8 streams by default,
h2load pinned to --client-core, each server to --server-core. A short h2load run of its
own warms each server up (h2load's --warm-up-time would count the warm-up's bytes but not
its requests, and blur the CPU window); rounds alternate the servers so drift hits them
alike. Bounded: each window stops after --seconds.

gRPC answers HTTP 200 even to a failed call (the status is in the trailers), so h2load
counts errors as successes. Each window is checked: every server's DATA bytes per
completed request must reach a framed echo response's size (an error has no DATA), and
inferd's ModelStatistics success count must grow by h2load's completed requests (plus at
most the streams in flight when h2load stopped). A window that fails is reported INVALID.

    apt-get install nghttp2-client
    python -m inferd.bench.native_load --elements 16 --rounds 2 --seconds 5
    python -m inferd.bench.native_load --elements 150528 --concurrency1 --json out.json
    python -m inferd.bench.native_load --inferd-args="--frontends 2" --mlserver
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from inferd.bench._harness import (
    PinnedServer,
    add_pinning_arguments,
    markdown_table,
    tree_cpu_seconds,
)
from inferd.bench.peers.echo_servicer import FLAVORS, _echo
from inferd.protos import grpc_service_pb2 as pb
from inferd.protos import grpc_service_pb2_grpc as pb_grpc

MODEL = "identity_fp32"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
# What a gRPC client sends; h2load adds :method POST and content-length for -d.
GRPC_HEADERS = (
    "content-type: application/grpc",
    "te: trailers",
    "grpc-accept-encoding: identity",
)


@dataclass(frozen=True, slots=True)
class Load:
    name: str
    connections: int
    streams: int  # per connection


@dataclass(frozen=True, slots=True)
class H2loadResult:
    started: int
    done: int  # completed responses, gRPC errors included
    errors: int  # h2load's failed + errored + timeout, and non-2xx statuses
    data_bytes: int  # DATA frame payload received
    rate: float  # h2load's req/s: done over its measured duration
    mean_ms: float  # h2load's mean "time for request"
    p50_ms: float | None  # from h2load's per-request log
    p99_ms: float | None
    cpu_seconds: float  # h2load's own user + system time
    wall_seconds: float


@dataclass(slots=True)
class Window:
    server: str
    load: str
    round: int
    h2load: H2loadResult
    server_cpu_seconds: float
    successes: int | None = None  # inferd's ModelStatistics deltas; None for other servers
    failures: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def server_cores(self) -> float:
        return self.server_cpu_seconds / self.h2load.wall_seconds

    @property
    def server_us_per_request(self) -> float:
        return self.server_cpu_seconds / max(self.h2load.done, 1) * 1e6


def framed(message: bytes) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def request_and_response_size(elements: int) -> tuple[bytes, int]:
    """The framed ModelInferRequest, and the framed size of the echo servicer's answer:
    the least DATA a successful response carries (inferd's names a version and OUTPUT0,
    one byte longer than the echoed INPUT0)."""
    data = np.random.default_rng(0).random((1, elements), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=data.shape)
    request.raw_input_contents.append(data.tobytes())
    return framed(request.SerializeToString()), len(framed(_echo(request).SerializeToString()))


def _milliseconds(text: str) -> float:
    """h2load's durations: ``308us``, ``17.25ms``, ``2.00s``."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected h2load duration {text!r}")
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]


def _search(pattern: str, output: str) -> re.Match[str]:
    match = re.search(pattern, output)
    if match is None:
        raise RuntimeError(f"h2load printed no {pattern!r}:\n{output[-2000:]}")
    return match


def _percentiles(log: Path) -> tuple[float | None, float | None]:
    """p50 and p99 of the log's completed requests (columns: start µs, status, µs taken;
    status -1 for streams cut off when h2load stopped)."""
    taken = [
        int(columns[2])
        for columns in (line.split("\t") for line in log.read_text().splitlines())
        if len(columns) >= 3 and columns[1] != "-1"
    ]
    if not taken:
        return None, None
    p50, p99 = np.percentile(np.array(taken) / 1000, [50, 99])
    return float(p50), float(p99)


def run_h2load(
    url: str, body: Path, load: Load, seconds: float, core: int, log: Path | None = None
) -> H2loadResult:
    """One timed h2load window on one thread, pinned to ``core``."""
    command = [
        "taskset", "-c", str(core), "h2load", "--threads", "1",
        # h2load takes whole durations only; milliseconds allow 2.5 s windows.
        "--duration", f"{round(seconds * 1000)}ms",
        "--clients", str(load.connections), "--max-concurrent-streams", str(load.streams),
        "--data", str(body), *(part for header in GRPC_HEADERS for part in ("-H", header)),
    ]  # fmt: skip
    if log is not None:
        log.unlink(missing_ok=True)  # h2load appends to an existing log
        command += ["--log-file", str(log)]
    # h2load is the only child that exits during the window (servers are reaped later),
    # so the children's rusage delta is its CPU time: taskset execs it, same process.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    finished = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = finished.stdout + finished.stderr
    if finished.returncode != 0:
        raise RuntimeError(f"h2load exited with {finished.returncode}:\n{output[-2000:]}")
    requests = _search(
        r"requests: \d+ total, (\d+) started, (\d+) done, \d+ succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        output,
    )
    statuses = _search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    timing = _search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", output)
    p50, p99 = _percentiles(log) if log is not None else (None, None)
    return H2loadResult(
        started=int(requests.group(1)),
        done=int(requests.group(2)),
        errors=sum(int(requests.group(n)) for n in (3, 4, 5))
        + sum(int(statuses.group(n)) for n in (2, 3, 4)),
        data_bytes=int(_search(r"\((\d+)\) data", output).group(1)),
        rate=float(_search(r"finished in \S+, ([\d.]+) req/s", output).group(1)),
        mean_ms=_milliseconds(timing.group(3)),
        p50_ms=p50,
        p99_ms=p99,
        cpu_seconds=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        wall_seconds=wall,
    )


class ModelCounts:
    """inferd's success and failure counts for MODEL, read once the server is idle."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def _read(self) -> tuple[int, int]:
        response = self._stub.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL), timeout=10)
        stats = response.model_stats[0].inference_stats
        return stats.success.count, stats.fail.count

    def settled(self) -> tuple[int, int]:
        """Counts that no longer change: h2load stops with streams in flight, which the
        server may still finish (or count as cancelled) after h2load has exited."""
        last = self._read()
        for _ in range(30):
            time.sleep(0.1)
            current = self._read()
            if current == last:
                break
            last = current
        return last

    def close(self) -> None:
        self._channel.close()


def check(window: Window, response_size: int) -> None:
    """Append to ``window.problems`` each sign that some responses were gRPC errors."""
    result = window.h2load
    if result.done == 0:
        window.problems.append("no request completed")
        return
    if result.errors:
        window.problems.append(f"{result.errors} HTTP-level errors")
    # A Trailers-Only error response sends no DATA, so errors pull the mean below one
    # success's size. (The part of a large response h2load got before cutting its stream
    # off at the end counts too: it only adds.)
    per_request = result.data_bytes / result.done
    if per_request < response_size:
        window.problems.append(
            f"{per_request:.0f} DATA bytes per response, a success has {response_size}"
        )
    if window.successes is not None and window.failures is not None:
        # The streams h2load cut off (started, not done) may finish after all, or count
        # as failed (cancelled); no other request may fail.
        cut_off = result.started - result.done
        if not result.done <= window.successes <= result.started:
            window.problems.append(
                f"ModelStatistics counted {window.successes} successes for "
                f"{result.done} completed requests"
            )
        if window.failures > cut_off:
            window.problems.append(f"ModelStatistics counted {window.failures} failures")


def measure_server(
    name: str,
    server: PinnedServer,
    loads: Sequence[Load],
    args: argparse.Namespace,
    body: Path,
    response_size: int,
    round_: int,
    work: Path,
) -> list[Window]:
    """Warm ``server`` up, then one window per load."""
    url = f"http://{server.address}{METHOD}"
    run_h2load(url, body, loads[0], args.warmup, args.client_core)
    # Of these servers only inferd keeps ModelStatistics.
    counts = ModelCounts(server.address) if name.startswith("inferd") else None
    windows = []
    try:
        for load in loads:
            before = counts.settled() if counts else None
            cpu_before = tree_cpu_seconds(server.pid)
            result = run_h2load(url, body, load, args.seconds, args.client_core, work / "log")
            window = Window(
                name, load.name, round_, result, tree_cpu_seconds(server.pid) - cpu_before
            )
            if counts and before is not None:
                after = counts.settled()
                window.successes, window.failures = after[0] - before[0], after[1] - before[1]
            check(window, response_size)
            for problem in window.problems:
                print(
                    f"INVALID: {name}, {load.name}, round {round_ + 1}: {problem}", file=sys.stderr
                )
            print(
                f"{name}, {load.name}: {result.rate:,.0f} requests/s", file=sys.stderr, flush=True
            )
            windows.append(window)
    finally:
        if counts:
            counts.close()
    return windows


# The inferd rows when --inferd-args is not given: each gRPC front, one process.
DEFAULT_INFERD_VARIANTS = ("--grpc-front threads", "--grpc-front asyncio")


def servers(args: argparse.Namespace) -> dict[str, Callable[[], PinnedServer]]:
    """Name -> how to start it pinned to the server core: inferd, the echo servicers and,
    with --mlserver, MLServer in its own environment (built first if need be)."""
    from inferd.engines.demo.repository import cached_demo_repository

    repository = cached_demo_repository()

    def inferd(extra: list[str]) -> Callable[[], PinnedServer]:
        return lambda: PinnedServer.inferd(repository, args.server_core, *extra)

    def start(module: list[str]) -> Callable[[], PinnedServer]:
        return lambda: PinnedServer(module, args.server_core)

    starts: dict[str, Callable[[], PinnedServer]] = {}
    for variant in args.inferd_args or DEFAULT_INFERD_VARIANTS:
        extra = shlex.split(variant)
        starts[f"inferd {' '.join(extra)}".strip()] = inferd(extra)
    for flavor in FLAVORS:
        starts[f"echo servicer, {flavor}"] = start(
            ["inferd.bench.peers.echo_servicer", "--flavor", flavor]
        )
    if args.mlserver:
        from inferd.bench.peers.mlserver import (
            CONFIGS,
            MLSERVER_VERSION,
            cache_root,
            ensure_mlserver,
        )

        cache = cache_root()
        ensure_mlserver(cache)  # before any server starts: a build takes minutes
        for config in CONFIGS:
            starts[f"MLServer {MLSERVER_VERSION}, {config}"] = start(
                ["inferd.bench.peers.mlserver", "serve", "--config", config, "--grpc-port", "0",
                 "--cache", str(cache)]
            )  # fmt: skip
    return starts


def _mean(values: Sequence[float | None]) -> str:
    known = [value for value in values if value is not None]
    return f"{np.mean(known):.2f}" if known else "-"


def table(windows: Sequence[Window]) -> str:
    groups: dict[tuple[str, str], list[Window]] = defaultdict(list)
    for window in windows:
        groups[window.server, window.load].append(window)
    fastest: dict[str, float] = defaultdict(float)
    for (_, load), group in groups.items():
        fastest[load] = max(fastest[load], float(np.mean([w.h2load.rate for w in group])))
    rows = []
    for (server, load), group in groups.items():
        rate = float(np.mean([w.h2load.rate for w in group]))
        rows.append([
            server, load, " / ".join(f"{w.h2load.rate:,.0f}" for w in group), f"{rate:,.0f}",
            f"{rate / fastest[load]:.2f}", f"{np.mean([w.server_cores for w in group]):.2f}",
            f"{np.mean([w.server_us_per_request for w in group]):.0f}",
            f"{np.mean([w.h2load.cpu_seconds / w.h2load.wall_seconds for w in group]):.2f}",
            _mean([w.h2load.mean_ms for w in group]), _mean([w.h2load.p50_ms for w in group]),
            _mean([w.h2load.p99_ms for w in group]), str(sum(w.h2load.errors for w in group)),
            "INVALID" if any(w.problems for w in group) else "ok",
        ])  # fmt: skip
    header = [
        "server", "load", "requests/s per round", "mean", "ratio to fastest",
        "server CPU (cores)", "server CPU µs per request", "h2load CPU (cores)", "mean ms",
        "p50 ms", "p99 ms", "errors", "check",
    ]  # fmt: skip
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=16, help="FP32 elements per request (16)")
    parser.add_argument("--connections", type=int, default=8, help="h2load clients (8)")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams each (8)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per server (1)")
    parser.add_argument(
        "--concurrency1", action="store_true",
        help="also a window with one connection and one stream: latency at concurrency 1",
    )  # fmt: skip
    parser.add_argument(
        "--inferd-args", action="append", metavar="ARGS",
        help="one inferd row per use, its extra `inferd serve` arguments as one string: "
        "--inferd-args='--frontends 2' (default: both gRPC fronts, asyncio and threads)",
    )  # fmt: skip
    parser.add_argument("--mlserver", action="store_true", help="also MLServer (builds its venv)")
    parser.add_argument("--json", type=Path, help="write every window's raw numbers here")
    add_pinning_arguments(parser, rounds=True)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        parser.error("h2load not found: apt-get install nghttp2-client")

    # This process only waits and reads /proc; keep it off the server's core.
    os.sched_setaffinity(0, {args.client_core})
    loads = [Load(f"{args.connections}x{args.streams} streams", args.connections, args.streams)]
    if args.concurrency1:
        loads.append(Load("concurrency 1", 1, 1))
    starts = servers(args)
    body_bytes, response_size = request_and_response_size(args.elements)
    windows: list[Window] = []
    with tempfile.TemporaryDirectory(prefix="inferd-native-load-") as directory:
        work = Path(directory)
        body = work / "request.bin"
        body.write_bytes(body_bytes)
        for round_ in range(args.rounds):
            for name, start in starts.items():
                server = start()
                try:
                    windows += measure_server(
                        name, server, loads, args, body, response_size, round_, work
                    )
                finally:
                    server.stop()
    print(
        f"1x{args.elements} FP32 requests to {MODEL} ({len(body_bytes):,} bytes framed), "
        f"h2load on core {args.client_core}, server on core {args.server_core}, "
        f"{args.seconds:g} s windows after {args.warmup:g} s warm-up, {args.rounds} "
        f"alternating rounds"
    )
    print(table(windows))
    if args.json:
        args.json.write_text(json.dumps([asdict(window) for window in windows], indent=2))
    invalid = [w for w in windows if w.problems]
    if invalid:
        print(
            f"INVALID: {len(invalid)} of {len(windows)} windows failed their checks",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
