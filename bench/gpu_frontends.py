"""BERT-base on a GPU through several gRPC front processes: ``inferd serve --frontends N``
(N = 1, 2, 4, 8) against the engine's in-process ceiling measured in the same run, and the
bare echo servicer as N processes sharing the port, for how a Python gRPC front scales
with no engine behind it. Made to run once on a lent 16-core GPU machine inside one call
(``bench/gpu_frontends.sh``).

1. Ceiling: BERT-base (fp16, seq 128, random weights; ``bench/gpu_torch.py``'s builder),
   CUDA graphs, --instances instances, served in-process through the engine-client
   interface (no gRPC) with --concurrency batch-1 requests outstanding, pinned to the
   server cores; then the module alone at the batch sizes the scheduler formed
   (``gpu_torch.engine_run`` and ``gpu_torch.direct_ceiling``).
2. Served (``bench/frontends.py``'s scenarios): the same repository by inferd with N front
   processes, then N echo servicers (uvloop) sharing one port, all on the first half of
   the cores (0-7), each driven by --workers load processes on the other half (8-15), each
   with --channels connections: batch-1 requests, closed loop, --concurrency outstanding
   in all, one window of --seconds after --warmup, --rounds alternating rounds.

    python -m inferd.bench.gpu_frontends --out DIR             # on the GPU machine
    python -m inferd.bench.gpu_frontends --out DIR --dry-run   # tiny model on CPU: does it run

Results go to DIR/gpu_frontends.json and DIR/gpu_frontends.md after every step, so a run
cut short still leaves what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from inferd.bench.frontends import (
    LoadShape,
    Sample,
    Scenario,
    Server,
    Workload,
    frontends_available,
    progress,
    render,
    scaling_summary,
    summarize,
    sweep,
)
from inferd.bench.gpu_torch import (
    GPU_MODELS,
    SMOKE_MODELS,
    direct_ceiling,
    engine_run,
    environment,
    write_model,
)
from inferd.engines.execution.executor import GPU_GIL_SWITCH_INTERVAL_S


def _cores(text: str) -> set[int]:
    first, _, last = text.partition("-")
    return set(range(int(first), int(last or first) + 1))


def ceiling(document: dict[str, Any], args: argparse.Namespace, gpu: bool) -> None:
    model = SMOKE_MODELS[1] if args.dry_run else GPU_MODELS[1]
    result = engine_run(model, args.instances, gpu, gpu, args.concurrency, args.seconds)
    module_rate, coverage = direct_ceiling(model, gpu, gpu, result.batch_sizes)
    document["ceiling"] = {
        "engine_throughput": result.throughput,
        "mean_batch": result.mean_batch,
        "module_rows_per_s": module_rate,
        "module_covers": coverage,
    }


def render_document(document: dict[str, Any]) -> str:
    lines = [f"# gRPC front processes on {document['environment'].get('gpu') or 'CPU (dry run)'}"]
    lines += ["", "```", json.dumps(document["environment"]), "```", ""]
    lines.append(document["setup"] + "\n")
    engine = document.get("ceiling", {}).get("engine_throughput")
    if engine:
        ceiling = document["ceiling"]
        lines.append(
            f"In-process engine (no gRPC): {engine:,.0f} req/s, mean batch "
            f"{ceiling['mean_batch']:.1f}; the module alone at those batch sizes "
            f"{ceiling['module_rows_per_s']:,.0f} rows/s (sizes timed cover "
            f"{ceiling['module_covers']:.0%} of the rows).\n"
        )
    samples = [Sample(**{**s, "server": Server(s["server"])}) for s in document["served"]]
    rows = summarize(samples)
    if rows:
        lines.append(render(rows) + "\n")
        lines += [f"- {line}" for line in scaling_summary(rows)]
        if engine:
            lines += [
                f"- inferd x{row.processes}: {row.rate / engine:.0%} of the in-process engine"
                for row in rows
                if row.server is Server.INFERD
            ]
    lines += [f"\n! {failure}" for failure in document["failures"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--dry-run", action="store_true",
        help="a tiny model on CPU, 1 and 2 processes, 1 s windows: checks the script",
    )  # fmt: skip
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--instances", type=int, default=4, help="model instances (4)")
    parser.add_argument("--concurrency", type=int, default=512, help="outstanding (512)")
    parser.add_argument("--workers", type=int, default=8, help="load processes (8)")
    parser.add_argument("--channels", type=int, default=8, help="per load process (8)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per window (5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each (2)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (1)")
    args = parser.parse_args()
    if args.dry_run:
        args.processes, args.concurrency, args.workers, args.channels = [1, 2], 16, 2, 2
        args.seconds, args.warmup = 1.0, 0.5
    sys.setswitchinterval(GPU_GIL_SWITCH_INTERVAL_S)  # as inferd serve has for GPU models
    gpu = not args.dry_run
    cpus = os.cpu_count() or 2
    server_cores, load_cores = f"0-{cpus // 2 - 1}", f"{cpus // 2}-{cpus - 1}"
    with_frontends = frontends_available()
    scenarios = [
        Scenario(server, processes, server_cores)
        for processes in args.processes
        for server in Server
        if server is Server.ECHO or processes == 1 or with_frontends
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "environment": environment(),
        "setup": (
            f"Servers on cores {server_cores}, load: {args.workers} processes on cores "
            f"{load_cores}, {args.channels} connections each, {args.concurrency} batch-1 "
            f"requests outstanding in all; {args.instances} instances, CUDA graphs "
            f"{'on' if gpu else 'off'}; {args.seconds:g} s windows after {args.warmup:g} s "
            f"warm-up, {args.rounds} round(s)."
        ),
        "ceiling": {},
        "served": [],
        "failures": [] if with_frontends else ["inferd serve has no --frontends: 1 process only"],
    }

    def save() -> None:
        (args.out / "gpu_frontends.json").write_text(json.dumps(document, indent=2) + "\n")
        (args.out / "gpu_frontends.md").write_text(render_document(document))

    save()
    os.sched_setaffinity(0, _cores(server_cores))  # the engine gets the servers' cores
    try:
        ceiling(document, args, gpu)
    except Exception:
        document["failures"].append(f"ceiling: {traceback.format_exc()}")
    print(f"ceiling {document['ceiling']}", flush=True)
    save()

    # The load processes inherit this affinity.
    os.sched_setaffinity(0, _cores(load_cores))
    model = SMOKE_MODELS[1] if args.dry_run else GPU_MODELS[1]
    workload = Workload(
        f"{model.name} batch 1", model.name,
        {model.input_name: model.row(np.random.default_rng(1))},
    )  # fmt: skip
    load = LoadShape(args.concurrency, args.channels, args.workers)
    with tempfile.TemporaryDirectory() as repository:
        write_model(Path(repository), model, args.instances, gpu, gpu)
        for _ in range(args.rounds):
            for scenario in scenarios:
                try:
                    samples = sweep(
                        [scenario], [workload], Path(repository), load, args.seconds,
                        args.warmup, 1, lambda sample: print(progress(sample), flush=True),
                    )  # fmt: skip
                    document["served"] += [asdict(sample) for sample in samples]
                except Exception:
                    failure = f"{scenario}: {traceback.format_exc()}"
                    document["failures"].append(failure)
                    print(failure, flush=True)
                save()
    print(render_document(document))


if __name__ == "__main__":
    main()
