"""inferd against the ceiling of a Python gRPC server: bare echo servicers.

Serves an identity model with inferd and, in turn, three echo servicers with no model
work (grpc.aio on asyncio, grpc.aio on uvloop, sync ``grpc.server`` with a thread pool;
``bench/peers/echo_servicer.py``), each pinned to the same core, and drives each from
this process, pinned to the other core, with the same closed loop. Rounds alternate the
servers so drift on a shared machine hits them alike. Bounded: each window stops after
--seconds.

    python -m inferd.bench.ceiling --elements 16 --concurrency 64 --rounds 2 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from inferd.bench._harness import PinnedServer, add_pinning_arguments, closed_loop, markdown_table
from inferd.bench.peers.echo_servicer import FLAVORS

MODEL = "identity_fp32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=16, help="FP32 elements per request")
    parser.add_argument("--concurrency", type=int, default=64)
    add_pinning_arguments(parser, rounds=True)
    args = parser.parse_args()

    from inferd.engines.demo.repository import cached_demo_repository

    repository = cached_demo_repository()
    os.sched_setaffinity(0, {args.client_core})
    inputs = {"INPUT0": np.random.default_rng(0).random((1, args.elements), dtype=np.float32)}

    def echo(flavor: str) -> Callable[[], PinnedServer]:
        module = ["inferd.bench.peers.echo_servicer", "--flavor", flavor]
        return lambda: PinnedServer(module, args.server_core)

    servers: dict[str, Callable[[], PinnedServer]] = {
        "inferd (identity_fp32)": lambda: PinnedServer.inferd(repository, args.server_core),
        **{f"echo servicer, {flavor}": echo(flavor) for flavor in FLAVORS},
    }
    rates: dict[str, list[float]] = defaultdict(list)
    server_us: dict[str, list[float]] = defaultdict(list)  # server CPU per request
    load_cpu: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.rounds):
        for name, start in servers.items():
            server = start()
            try:
                measurement = asyncio.run(
                    closed_loop(
                        server.address, server.pid, MODEL, inputs, args.concurrency,
                        args.seconds, name,
                    )
                )  # fmt: skip
            finally:
                server.stop()
            rates[name].append(measurement.rate)
            server_us[name].append((measurement.server_cpu or 0.0) / measurement.rate * 1e6)
            load_cpu[name].append(measurement.client_cpu or 0.0)
    fastest = max(np.mean(values) for values in rates.values())
    rows = [
        [
            name, " / ".join(f"{rate:,.0f}" for rate in values), f"{np.mean(values):,.0f}",
            f"{np.mean(values) / fastest:.2f}", f"{np.mean(server_us[name]):.0f}",
            f"{np.mean(load_cpu[name]):.0%}",
        ]
        for name, values in rates.items()
    ]  # fmt: skip
    print(
        f"1x{args.elements} FP32 requests, concurrency {args.concurrency}, server on core "
        f"{args.server_core}, load on core {args.client_core}, {args.seconds:.0f} s windows, "
        f"{args.rounds} alternating rounds"
    )
    header = [
        "server", "requests/s per round", "mean", "ratio to fastest",
        "server CPU µs per request", "load CPU",
    ]  # fmt: skip
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
