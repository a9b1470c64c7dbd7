"""What serving costs: one model called in-process versus through inferd over gRPC.

Starts ``inferd serve`` on the demo repository pinned to one core, runs the load from
this process pinned to another, and reports throughput and latency for each concurrency
next to the in-process rate of the same model on the same inputs, so the ratio (not the
noisy absolute) carries the result. Bounded: each measurement stops after --seconds.

    python -m inferd.bench.serving_overhead --model simple --concurrency 1 4 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inferd.clients import AsyncClient, Client

_INPUTS = {
    "simple": lambda: {
        "INPUT0": np.arange(16, dtype=np.int32).reshape(1, 16),
        "INPUT1": np.ones((1, 16), dtype=np.int32),
    },
    "identity_fp32": lambda: {"INPUT0": np.zeros((1, 256), dtype=np.float32)},
    "cnn_classifier": lambda: {"INPUT": np.zeros((1, 3, 32, 32), dtype=np.float32)},
}


@dataclass(frozen=True, slots=True)
class Result:
    label: str
    requests: int
    seconds: float
    latencies_ms: np.ndarray
    server_cpu: float | None = None  # fraction of one core the server process used
    client_cpu: float | None = None  # fraction of one core this process used

    def line(self, baseline_rate: float) -> str:
        rate = self.requests / self.seconds
        p50, p99 = np.percentile(self.latencies_ms, [50, 99])
        server = "-" if self.server_cpu is None else f"{self.server_cpu:.0%}"
        client = "-" if self.client_cpu is None else f"{self.client_cpu:.0%}"
        return (
            f"| {self.label} | {rate:,.0f} | {rate / baseline_rate:.3f} | {p50:.2f} | "
            f"{p99:.2f} | {server} | {client} |"
        )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _in_process(repository: Path, model: str, inputs: dict, seconds: float) -> Result:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(repository / model / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    latencies = []
    end = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        begin = time.perf_counter()
        session.run(None, inputs)
        latencies.append((time.perf_counter() - begin) * 1000)
    return Result(
        "in-process onnxruntime", len(latencies), time.perf_counter() - started, np.array(latencies)
    )


async def _served(
    address: str, server_pid: int, model: str, inputs: dict, concurrency: int, seconds: float
) -> Result:
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
        server_before, client_before = _cpu_seconds(server_pid), _cpu_seconds(os.getpid())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        server_cpu = (_cpu_seconds(server_pid) - server_before) / elapsed
        client_cpu = (_cpu_seconds(os.getpid()) - client_before) / elapsed
    label = f"inferd, concurrency {concurrency}"
    return Result(label, len(latencies), elapsed, np.array(latencies), server_cpu, client_cpu)


def _start_server(repository: Path, core: int) -> tuple[subprocess.Popen, str]:
    command = [
        "taskset",
        "-c",
        str(core),
        sys.executable,
        "-m",
        "inferd.server",
        "serve",
        "--grpc-port",
        "0",
        "--model-repository",
        str(repository),
    ]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    address = None
    for line in server.stderr:
        match = re.search(r"listening on (\S+)", line)
        if match:
            address = match.group(1)
        if "ready:" in line:
            break
    if address is None:
        server.kill()
        raise RuntimeError("inferd did not start")
    return server, address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="simple", choices=sorted(_INPUTS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    args = parser.parse_args()

    from inferd.engines.demo_repository import cached_demo_repository

    repository = cached_demo_repository()
    os.sched_setaffinity(0, {args.client_core})
    inputs = _INPUTS[args.model]()
    server, address = _start_server(repository, args.server_core)
    try:
        with Client(address) as client:
            client.infer(args.model, inputs)
        baseline = _in_process(repository, args.model, inputs, args.seconds)
        results = [
            asyncio.run(_served(address, server.pid, args.model, inputs, concurrency, args.seconds))
            for concurrency in args.concurrency
        ]
    finally:
        server.terminate()
        server.wait(30)
    rate = baseline.requests / baseline.seconds
    print(
        f"model {args.model}, server on core {args.server_core}, load on core "
        f"{args.client_core}, {args.seconds:.0f} s per row"
    )
    print("| what | requests/s | ratio to in-process | p50 ms | p99 ms | server CPU | load CPU |")
    print("|---|---|---|---|---|---|---|")
    for result in (baseline, *results):
        print(result.line(rate))


if __name__ == "__main__":
    main()
