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
from collections.abc import Callable

import numpy as np

from inferd.bench._harness import (
    PinnedServer,
    add_pinning_arguments,
    closed_loop,
    in_process,
    markdown_table,
    percent,
)

_INPUTS: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "simple": lambda: {
        "INPUT0": np.arange(16, dtype=np.int32).reshape(1, 16),
        "INPUT1": np.ones((1, 16), dtype=np.int32),
    },
    "identity_fp32": lambda: {"INPUT0": np.zeros((1, 256), dtype=np.float32)},
    "cnn_classifier": lambda: {"INPUT": np.zeros((1, 3, 32, 32), dtype=np.float32)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="simple", choices=sorted(_INPUTS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    add_pinning_arguments(parser, rounds=False)
    args = parser.parse_args()

    from inferd.engines.demo.repository import cached_demo_repository

    repository = cached_demo_repository()
    os.sched_setaffinity(0, {args.client_core})
    inputs = _INPUTS[args.model]()
    server = PinnedServer.inferd(repository, args.server_core)
    try:
        model_file = repository / args.model / "1" / "model.onnx"
        baseline = in_process(model_file, inputs, args.seconds, "in-process onnxruntime")
        results = [
            asyncio.run(
                closed_loop(
                    server.address, server.pid, args.model, inputs, concurrency, args.seconds,
                    f"inferd, concurrency {concurrency}",
                )
            )
            for concurrency in args.concurrency
        ]  # fmt: skip
    finally:
        server.stop()
    rows = []
    for result in (baseline, *results):
        p50, p99 = result.percentiles()
        rows.append([
            result.label, f"{result.rate:,.0f}", f"{result.rate / baseline.rate:.3f}",
            f"{p50:.2f}", f"{p99:.2f}", percent(result.server_cpu), percent(result.client_cpu),
        ])  # fmt: skip
    print(
        f"model {args.model}, server on core {args.server_core}, load on core "
        f"{args.client_core}, {args.seconds:.0f} s per row"
    )
    header = ["what", "requests/s", "ratio to in-process", "p50 ms", "p99 ms",
              "server CPU", "load CPU"]  # fmt: skip
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
