"""What tracing costs: identity-model throughput with tracing off, on for 1% of requests,
and on for all of them, exporting over OTLP/gRPC to a sink that drops the spans.

inferd runs pinned to core 0; the load and the sink share core 1. Rounds alternate the
three settings. Bounded: each window stops after --seconds.

    python -m inferd.bench.tracing_cost --concurrency 16 --rounds 2 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
from collections import defaultdict

import numpy as np

from inferd.bench._harness import PinnedServer, add_pinning_arguments, closed_loop, markdown_table

MODEL = "identity_fp32"
SETTINGS = {
    "tracing off": (),
    "tracing on, 1%": ("--trace-exporter", "otlp", "--trace-rate", "0.01"),
    "tracing on, 100%": ("--trace-exporter", "otlp", "--trace-rate", "1.0"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--inferd-args", default="", metavar="ARGS",
        help="extra `inferd serve` arguments for every setting (\"--grpc-front threads\")",
    )  # fmt: skip
    add_pinning_arguments(parser, rounds=True)
    args = parser.parse_args()

    from inferd.engines.demo.repository import cached_demo_repository

    repository = cached_demo_repository()
    os.sched_setaffinity(0, {args.client_core})
    inputs = {"INPUT0": np.zeros((1, 16), dtype=np.float32)}
    sink = PinnedServer(["inferd.bench.peers.otlp_sink"], args.client_core)
    environment = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{sink.address}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    rates: dict[str, list[float]] = defaultdict(list)
    server_us: dict[str, list[float]] = defaultdict(list)
    try:
        for _ in range(args.rounds):
            for name, flags in SETTINGS.items():
                server = PinnedServer.inferd(
                    repository, args.server_core, *flags, *shlex.split(args.inferd_args),
                    env=environment,
                )  # fmt: skip
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
    finally:
        sink.stop()
    baseline = float(np.mean(rates["tracing off"]))
    rows = [
        [
            name, " / ".join(f"{rate:,.0f}" for rate in values), f"{np.mean(values):,.0f}",
            f"{np.mean(values) / baseline:.2f}", f"{np.mean(server_us[name]):.0f}",
        ]
        for name, values in rates.items()
    ]  # fmt: skip
    print(
        f"{MODEL} 1x16 FP32, concurrency {args.concurrency}, inferd on core {args.server_core}, "
        f"load and OTLP sink on core {args.client_core}, {args.seconds:.0f} s windows, "
        f"{args.rounds} alternating rounds"
    )
    header = [
        "setting",
        "requests/s per round",
        "mean",
        "ratio to off",
        "server CPU µs per request",
    ]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
