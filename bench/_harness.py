"""What the benchmarks share: a pinned server process, a closed load loop, CPU accounting,
and an in-process onnxruntime baseline. Bounded: every loop stops after its seconds."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inferd.clients import AsyncClient


@dataclass(frozen=True, slots=True)
class Measurement:
    label: str
    requests: int
    seconds: float
    latencies_ms: np.ndarray
    server_cpu: float | None = None  # fraction of one core the server process used
    client_cpu: float | None = None  # fraction of one core the load process used

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentiles(self) -> tuple[float, float]:
        p50, p99 = np.percentile(self.latencies_ms, [50, 99])
        return float(p50), float(p99)


def add_pinning_arguments(parser: argparse.ArgumentParser, rounds: bool = False) -> None:
    """The options every scripted comparison shares: window length, cores, rounds."""
    if rounds:
        parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per window (5)")
    parser.add_argument("--server-core", type=int, default=0, help="(0)")
    parser.add_argument("--client-core", type=int, default=1, help="(1)")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of its living descendants, so that a supervisor's
    engine and front processes count with it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        children.setdefault(parent, []).append(int(stat.parent.name))
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += cpu_seconds(current)
        except OSError:
            continue
        pending += children.get(current, [])
    return total


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.0%}"


class PinnedServer:
    """A server process (``python -m MODULE ARGS``) pinned to one core, ready once it logs
    ``listening on ADDRESS`` and then ``ready:``, as inferd and the bench peers do."""

    def __init__(
        self, module_args: Sequence[str], core: int | str, env: Mapping[str, str] | None = None
    ) -> None:
        """``core``: one core, or a taskset list such as ``0-7``."""
        command = ["taskset", "-c", str(core), sys.executable, "-m", *module_args]
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        assert self.process.stderr is not None
        address = None
        self.startup_log: list[str] = []  # what it logged until ready
        for line in self.process.stderr:
            self.startup_log.append(line)
            match = re.search(r"listening on (\S+)", line)
            if match:
                address = match.group(1)
            if "ready:" in line:
                break
        if address is None:
            self.process.kill()
            raise RuntimeError(f"{' '.join(module_args)} did not start")
        self.address: str = address
        self.pid = self.process.pid
        # Keep reading its log so a chatty server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for _ in self.process.stderr:
            pass

    @classmethod
    def inferd(
        cls,
        repository: Path,
        core: int | str,
        *args: str,
        env: Mapping[str, str] | None = None,
    ) -> PinnedServer:
        """``inferd serve`` on ``repository``, no metrics port, plus ``args``."""
        return cls(
            ["inferd.server", "serve", "--grpc-port", "0", "--no-metrics",
             "--model-repository", str(repository), *args],
            core,
            env,
        )  # fmt: skip

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def closed_loop(
    address: str,
    server_pid: int,
    model: str,
    inputs: Mapping[str, np.ndarray],
    concurrency: int,
    seconds: float,
    label: str,
) -> Measurement:
    """``concurrency`` requests always outstanding for ``seconds``."""
    latencies: list[float] = []
    async with AsyncClient(address) as client:
        await client.infer(model, inputs)  # warm the channel
        end = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                begin = time.perf_counter()
                await client.infer(model, inputs)
                latencies.append((time.perf_counter() - begin) * 1000)

        started = time.perf_counter()
        server_before, client_before = cpu_seconds(server_pid), cpu_seconds(os.getpid())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        server_cpu = (cpu_seconds(server_pid) - server_before) / elapsed
        client_cpu = (cpu_seconds(os.getpid()) - client_before) / elapsed
    return Measurement(label, len(latencies), elapsed, np.array(latencies), server_cpu, client_cpu)


def in_process(
    model_file: Path, inputs: Mapping[str, np.ndarray], seconds: float, label: str
) -> Measurement:
    """The model called back to back with onnxruntime on one thread; requests = rows."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    feed = dict(inputs)
    rows = next(iter(feed.values())).shape[0]
    session.run(None, feed)  # warm up
    latencies = []
    end = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        begin = time.perf_counter()
        session.run(None, feed)
        latencies.append((time.perf_counter() - begin) * 1000)
    return Measurement(
        label, len(latencies) * rows, time.perf_counter() - started, np.array(latencies)
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
