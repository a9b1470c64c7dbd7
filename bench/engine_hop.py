"""What the hop to an engine process costs the engine: one core's worth of engine, fed
in-process and from another process, without gRPC.

In-process: ``InProcessEngineClient`` and the driving coroutines share core 0, as in
``inferd serve`` with one process (minus gRPC). Engine process: ``engine_main`` (the
engine process of ``--frontends N``) alone on core 0, fed by ``RemoteEngineClient`` from
this process on core 1, as a front process feeds it. The engine process's CPU per request
against the in-process CPU per request (engine and driver together) is what the hop
costs where CPU is scarcest; its rate with core 0 saturated is how many requests one
engine process absorbs per core. Rounds alternate the two. Bounded: each window stops
after --seconds.

    python -m inferd.bench.engine_hop --seconds 5 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inferd.bench._harness import cpu_seconds, markdown_table
from inferd.engines import EngineClient, InferRequest, InProcessEngineClient, InputTensor
from inferd.engines.demo.repository import build_demo_repository
from inferd.server.config import ServerConfig
from inferd.server.ipc.engine_process import EngineRuntime, engine_main
from inferd.server.ipc.events import receive_event
from inferd.server.ipc.remote_client import RemoteEngineClient
from inferd.server.ipc.ring import remove_segments


@dataclass(frozen=True, slots=True)
class Workload:
    label: str
    model: str
    inputs: dict[str, tuple[str, np.ndarray]]  # name -> (datatype, array)

    def request(self) -> InferRequest:
        tensors = [
            InputTensor(name, datatype, array.shape, array.tobytes())
            for name, (datatype, array) in self.inputs.items()
        ]
        return InferRequest(self.model, None, tensors)


WORKLOADS = (
    Workload(
        "simple 2x 1x16 INT32",
        "simple",
        {
            "INPUT0": ("INT32", np.arange(16, dtype=np.int32).reshape(1, 16)),
            "INPUT1": ("INT32", np.ones((1, 16), dtype=np.int32)),
        },
    ),
    Workload(
        "identity_fp32 1x150000 FP32 (600 KB)",
        "identity_fp32",
        {"INPUT0": ("FP32", np.zeros((1, 150_000), dtype=np.float32))},
    ),
)


@dataclass(frozen=True, slots=True)
class Sample:
    workload: str
    where: str  # "in-process" or "engine process"
    rate: float  # requests/s
    engine_cpu_us: float  # CPU per request of the engine's process (in-process: all of it)
    driver_cpu_us: float | None  # the feeding process's, when it is another one


async def _drive(
    client: EngineClient, workload: Workload, concurrency: int, seconds: float, warmup: float
) -> tuple[int, float]:
    """Closed loop: ``concurrency`` requests outstanding; (completed, seconds) measured."""
    completed = 0
    measuring = False
    deadline = time.perf_counter() + warmup + seconds

    async def worker() -> None:
        nonlocal completed
        while time.perf_counter() < deadline:
            await client.infer(workload.request())
            if measuring:
                completed += 1

    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring, started = True, time.perf_counter()
    await asyncio.gather(*workers)
    return completed, time.perf_counter() - started


def in_process(repository: Path, workload: Workload, args: argparse.Namespace) -> Sample:
    os.sched_setaffinity(0, {args.engine_core})

    async def run() -> tuple[int, float, float]:
        client = InProcessEngineClient(repository)
        await client.start()
        try:
            before = cpu_seconds(os.getpid())
            completed, elapsed = await _drive(
                client, workload, args.concurrency, args.seconds, args.warmup
            )
            return completed, elapsed, cpu_seconds(os.getpid()) - before
        finally:
            await client.close()

    completed, elapsed, cpu = asyncio.run(run())
    # The CPU window includes the warm-up; scale it to the measured share.
    share = elapsed / (elapsed + args.warmup)
    return Sample(
        workload.label, "in-process", completed / elapsed, cpu * share / completed * 1e6, None
    )


def engine_process(
    repository: Path, workload: Workload, args: argparse.Namespace, generation: int
) -> Sample:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="inferd-hop-") as runtime_dir:
        socket_path = Path(runtime_dir) / "engine.sock"
        config = ServerConfig(model_repository=repository, metrics_port=None, frontends=2)
        runtime = EngineRuntime(socket_path, os.getpid(), generation, 64 * 2**20)
        receive, send = context.Pipe(duplex=False)
        os.sched_setaffinity(0, {args.engine_core})  # the engine inherits it
        engine = context.Process(target=engine_main, args=(config, runtime, send))
        engine.start()
        send.close()
        os.sched_setaffinity(0, {args.driver_core})
        try:
            receive_event(receive)  # EngineReady
            assert engine.pid is not None
            engine_pid = engine.pid

            async def run() -> tuple[int, float, float, float]:
                client = RemoteEngineClient(socket_path, front_id=0, epoch=1)
                await client.start()
                try:
                    engine_before, driver_before = cpu_seconds(engine_pid), cpu_seconds(os.getpid())
                    completed, elapsed = await _drive(
                        client, workload, args.concurrency, args.seconds, args.warmup
                    )
                    return (
                        completed,
                        elapsed,
                        cpu_seconds(engine_pid) - engine_before,
                        cpu_seconds(os.getpid()) - driver_before,
                    )
                finally:
                    await client.close()

            completed, elapsed, engine_cpu, driver_cpu = asyncio.run(run())
        finally:
            os.kill(engine.pid or 0, signal.SIGTERM)
            engine.join(30)
            remove_segments(os.getpid())
    share = elapsed / (elapsed + args.warmup)
    return Sample(
        workload.label,
        "engine process",
        completed / elapsed,
        engine_cpu * share / completed * 1e6,
        driver_cpu * share / completed * 1e6,
    )


def render(samples: list[Sample]) -> str:
    groups: dict[tuple[str, str], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.workload, sample.where), []).append(sample)
    rows = []
    for (workload, where), group in groups.items():
        drivers = [s.driver_cpu_us for s in group if s.driver_cpu_us is not None]
        rows.append(
            [
                workload,
                where,
                f"{np.mean([s.rate for s in group]):,.0f} ("
                + " / ".join(f"{s.rate:,.0f}" for s in group)
                + ")",
                f"{np.mean([s.engine_cpu_us for s in group]):.0f}",
                f"{np.mean(drivers):.0f}" if drivers else "-",
            ]
        )
    header = [
        "workload",
        "engine",
        "req/s (per round)",
        "engine process CPU µs/request",
        "feeding process CPU µs/request",
    ]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per window (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each (1)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    parser.add_argument("--concurrency", type=int, default=64, help="outstanding (64)")
    parser.add_argument("--engine-core", type=int, default=0, help="(0)")
    parser.add_argument("--driver-core", type=int, default=1, help="(1)")
    args = parser.parse_args()
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="inferd-hop-repo-") as directory:
        repository = build_demo_repository(Path(directory) / "models")
        for round_index in range(args.rounds):
            for workload in WORKLOADS:
                generation = round_index * len(WORKLOADS) + WORKLOADS.index(workload) + 1
                for sample in (
                    in_process(repository, workload, args),
                    engine_process(repository, workload, args, generation),
                ):
                    print(
                        f"{sample.where}, {sample.workload}: {sample.rate:,.0f} req/s, engine "
                        f"{sample.engine_cpu_us:.0f} µs/request",
                        flush=True,
                    )
                    samples.append(sample)
    print(
        f"\nengine on core {args.engine_core}; the engine process's feeder on core "
        f"{args.driver_core}; {args.concurrency} requests outstanding; {args.seconds:g} s "
        f"windows after {args.warmup:g} s warm-up, {args.rounds} round(s)\n"
    )
    print(render(samples))


if __name__ == "__main__":
    main()
