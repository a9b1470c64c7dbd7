"""Several gRPC front processes against one: ``inferd serve --frontends N`` next to the
bare echo servicer (``bench/peers/echo_servicer.py``, uvloop) run as N processes sharing
the port with SO_REUSEPORT, on the same cores.

Two workloads: ``simple`` (two INT32 1x16 inputs) and ``identity_fp32`` with one FP32
1x150000 input (600 KB each way; the echo servicer returns the same bytes). For each,
a closed loop keeps --concurrency requests outstanding over --channels connections for
--seconds and reports throughput, p50/p99 (nearest rank, as ``inferd bench``), the CPU of
every server process together and of the load, in cores. SO_REUSEPORT balances
connections, not requests: one channel would reach one process, so there are several.

Pinning (on the 2-core development machine): N server processes on the first N of
--server-cores (one process on core 0, two on cores 0-1; for inferd all of them, the
supervisor and the engine process too), the load in this process on --load-core (1). At
two processes the load shares core 1 with the servers, alike for inferd and echo, so the
ratio inferd / echo at each process count is fair and the 2-process / 1-process scaling
is a lower bound for both. Rounds alternate the scenarios so drift on a shared machine
hits them alike; the table shows means over rounds. Bounded: every window stops after
--seconds.

    python -m inferd.bench.frontends --seconds 5 --rounds 2

``bench/gpu_frontends.py`` runs the same scenarios on a 16-core GPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inferd.bench._harness import PinnedServer, cpu_seconds, markdown_table, tree_cpu_seconds
from inferd.bench.measure import summarize_latencies
from inferd.bench.results import LoadLevel, LoadMode
from inferd.bench.workers import SessionConfig, WorkerPool

ECHO_MODULE = "inferd.bench.peers.echo_servicer"
REQUEST_TIMEOUT_S = 30.0  # a hung server shows as errors, never as a hang


class Server(str, enum.Enum):
    INFERD = "inferd"
    ECHO = "echo servicer"


@dataclass(frozen=True, slots=True)
class Workload:
    label: str
    model: str
    inputs: Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Scenario:
    """``processes`` front processes of ``server``, all pinned to ``cores`` (taskset)."""

    server: Server
    processes: int
    cores: str


@dataclass(frozen=True, slots=True)
class LoadShape:
    concurrency: int  # requests outstanding, over all load processes
    channels: int  # connections per load process
    workers: int = 1  # load processes; 1 runs the load in this process


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement window of one scenario on one workload."""

    workload: str
    server: Server
    processes: int
    throughput: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cores: float  # CPU of every server process together, in cores
    load_cores: float
    # inferd with several fronts: its engine process alone (near 1.0: the bound)
    engine_cores: float | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """A scenario on a workload over every round, with its comparisons."""

    workload: str
    server: Server
    processes: int
    rates: tuple[float, ...]  # requests/s, one per round
    p50_ms: float
    p99_ms: float
    errors: int
    server_cores: float
    load_cores: float
    engine_cores: float | None
    to_echo: float | None  # mean rate / the echo servicer's at the same process count
    scaling: float | None  # mean rate / its own at one process

    @property
    def rate(self) -> float:
        return float(np.mean(self.rates))


def frontends_available() -> bool:
    """Whether this inferd's ``serve`` has ``--frontends``."""
    command = [sys.executable, "-m", "inferd.server", "serve", "--help"]
    return "--frontends" in subprocess.run(command, capture_output=True, text=True).stdout


@contextlib.contextmanager
def serving(scenario: Scenario, repository: Path) -> Iterator[list[PinnedServer]]:
    """The scenario's servers, started and ready; stopped on exit."""
    servers: list[PinnedServer] = []
    try:
        if scenario.server is Server.INFERD:
            # One process is today's default; the flag only where it means something.
            extra = ["--frontends", str(scenario.processes)] if scenario.processes > 1 else []
            servers.append(PinnedServer.inferd(repository, scenario.cores, *extra))
        else:
            echo = [ECHO_MODULE, "--flavor", "uvloop"]
            if scenario.processes > 1:
                echo.append("--reuse-port")
            servers.append(PinnedServer(echo, scenario.cores))
            port = servers[0].address.rsplit(":", 1)[1]
            for _ in range(scenario.processes - 1):
                servers.append(PinnedServer([*echo, "--port", port], scenario.cores))
        yield servers
    finally:
        for server in servers:
            server.stop()


def measure(
    scenario: Scenario,
    servers: Sequence[PinnedServer],
    workload: Workload,
    load: LoadShape,
    seconds: float,
    warmup_s: float,
) -> Sample:
    """A warm-up window, then one measured window of ``load`` on ``workload``."""
    config = SessionConfig(
        servers[0].address, workload.model, workload.inputs, channels=load.channels,
        timeout=REQUEST_TIMEOUT_S,
    )  # fmt: skip
    level = LoadLevel(LoadMode.CONCURRENCY, load.concurrency)
    engine = engine_pid(servers[0])
    with WorkerPool(config, load.workers) as pool:
        pool.run_window(level, warmup_s)
        cpu_before = sum(tree_cpu_seconds(server.pid) for server in servers)
        engine_before = cpu_seconds(engine) if engine is not None else 0.0
        started = time.perf_counter()
        window = pool.run_window(level, seconds)
        elapsed = time.perf_counter() - started
        server_cpu = sum(tree_cpu_seconds(server.pid) for server in servers) - cpu_before
        engine_cpu = cpu_seconds(engine) - engine_before if engine is not None else None
    latency = summarize_latencies(window.latencies_us)
    return Sample(
        workload.label, scenario.server, scenario.processes, window.throughput,
        latency.p50_us / 1000, latency.p99_us / 1000, sum(window.errors.values()),
        server_cpu / elapsed, window.client_cpu_s / window.duration_s,
        None if engine_cpu is None else engine_cpu / elapsed,
    )  # fmt: skip


def engine_pid(server: PinnedServer) -> int | None:
    """inferd's engine process, when it runs several fronts (its log names it)."""
    for line in server.startup_log:
        match = re.search(r"\bengine\[(\d+)\]", line)
        if match:
            return int(match.group(1))
    return None


def sweep(
    scenarios: Sequence[Scenario],
    workloads: Sequence[Workload],
    repository: Path,
    load: LoadShape,
    seconds: float,
    warmup_s: float,
    rounds: int,
    report: Callable[[Sample], None],
) -> list[Sample]:
    """Every scenario on every workload, ``rounds`` times in alternation; each scenario's
    servers start once per round and serve all the workloads."""
    samples = []
    for _ in range(rounds):
        for scenario in scenarios:
            with serving(scenario, repository) as servers:
                for workload in workloads:
                    sample = measure(scenario, servers, workload, load, seconds, warmup_s)
                    report(sample)
                    samples.append(sample)
    return samples


def summarize(samples: Sequence[Sample]) -> list[Row]:
    """Rounds merged per (workload, server, processes), in the order first seen, with the
    ratio to the echo servicer at the same process count and the scaling from one process."""
    groups: dict[tuple[str, Server, int], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.workload, sample.server, sample.processes), []).append(sample)
    means = {key: float(np.mean([s.throughput for s in group])) for key, group in groups.items()}
    rows = []
    for (workload, server, processes), group in groups.items():
        rate = means[workload, server, processes]
        echo = means.get((workload, Server.ECHO, processes))
        single = means.get((workload, server, 1))
        rows.append(
            Row(
                workload, server, processes, tuple(s.throughput for s in group),
                float(np.mean([s.p50_ms for s in group])),
                float(np.mean([s.p99_ms for s in group])),
                sum(s.errors for s in group),
                float(np.mean([s.server_cores for s in group])),
                float(np.mean([s.load_cores for s in group])),
                _mean_or_none([s.engine_cores for s in group]),
                rate / echo if echo else None,
                rate / single if single else None,
            )
        )  # fmt: skip
    return rows


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return float(np.mean(known)) if known else None


def progress(sample: Sample) -> str:
    return (
        f"{sample.server.value} x{sample.processes}, {sample.workload}: "
        f"{sample.throughput:,.0f} req/s, p99 {sample.p99_ms:.2f} ms, errors {sample.errors}"
    )


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(rows: Sequence[Row]) -> str:
    header = [
        "workload", "scenario", "processes", "req/s (per round)", "p50 ms", "p99 ms",
        "ratio to echo, same processes", "scaling vs 1 process", "server CPU (cores)",
        "engine CPU (cores)", "load CPU (cores)", "errors",
    ]  # fmt: skip
    body = [
        [
            row.workload, row.server.value, str(row.processes),
            f"{row.rate:,.0f} ({' / '.join(f'{rate:,.0f}' for rate in row.rates)})",
            f"{row.p50_ms:.2f}", f"{row.p99_ms:.2f}", _ratio(row.to_echo), _ratio(row.scaling),
            f"{row.server_cores:.2f}",
            "-" if row.engine_cores is None else f"{row.engine_cores:.2f}",
            f"{row.load_cores:.2f}", str(row.errors),
        ]
        for row in rows
    ]  # fmt: skip
    return markdown_table(header, body)


def scaling_summary(rows: Sequence[Row]) -> list[str]:
    """One line per workload and process count above one: inferd's scaling next to echo's."""
    scaling = {(row.workload, row.server, row.processes): row.scaling for row in rows}
    lines = []
    for (workload, server, processes), inferd in scaling.items():
        echo = scaling.get((workload, Server.ECHO, processes))
        if server is Server.INFERD and processes > 1 and inferd and echo:
            lines.append(
                f"{workload}: {processes} processes / 1 process: inferd {inferd:.2f}x, "
                f"echo servicer {echo:.2f}x"
            )
    return lines


def workloads(elements: int) -> list[Workload]:
    rng = np.random.default_rng(0)
    return [
        Workload(
            "simple 2x 1x16 INT32",
            "simple",
            {
                "INPUT0": np.arange(16, dtype=np.int32).reshape(1, 16),
                "INPUT1": np.ones((1, 16), dtype=np.int32),
            },
        ),
        Workload(
            f"identity_fp32 1x{elements} FP32 ({elements * 4 / 1000:,.0f} KB)",
            "identity_fp32",
            {"INPUT0": rng.random((1, elements), dtype=np.float32)},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=64, help="(64)")
    parser.add_argument("--channels", type=int, default=8, help="connections (8)")
    parser.add_argument("--elements", type=int, default=150_000, help="identity FP32 (150000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per window (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each (1)")
    parser.add_argument(
        "--server-cores", type=int, nargs="+", default=[0, 1],
        help="N processes run on the first N of these (0 1)",
    )  # fmt: skip
    parser.add_argument("--load-core", type=int, default=1, help="(1)")
    args = parser.parse_args()
    if max(args.processes) > len(args.server_cores):
        parser.error(f"--server-cores lists {len(args.server_cores)}, fewer than the processes")

    from inferd.engines.demo.repository import cached_demo_repository

    def cores(processes: int) -> str:
        return ",".join(map(str, args.server_cores[:processes]))

    with_frontends = frontends_available()
    scenarios = [
        Scenario(server, processes, cores(processes))
        for processes in args.processes
        for server in Server
        if server is Server.ECHO or processes == 1 or with_frontends
    ]
    if not with_frontends and max(args.processes) > 1:
        print("inferd serve has no --frontends yet: inferd runs as 1 process only")
    os.sched_setaffinity(0, {args.load_core})
    load = LoadShape(args.concurrency, args.channels)
    samples = sweep(
        scenarios, workloads(args.elements), cached_demo_repository(), load, args.seconds,
        args.warmup, args.rounds, lambda sample: print(progress(sample), file=sys.stderr),
    )  # fmt: skip
    layout = ", ".join(f"{s.server.value} x{s.processes} on cores {s.cores}" for s in scenarios)
    print(
        f"{layout}; load: this process on core {args.load_core}, concurrency "
        f"{args.concurrency} over {args.channels} connections; {args.seconds:g} s windows "
        f"after {args.warmup:g} s warm-up, {args.rounds} alternating rounds\n"
    )
    rows = summarize(samples)
    print(render(rows))
    for line in scaling_summary(rows):
        print(f"\n{line}")


if __name__ == "__main__":
    main()
