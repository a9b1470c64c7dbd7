"""``inferd bench``: load-test any server that speaks the v2 gRPC protocol.

Flag names follow Triton's perf_analyzer where they mean the same thing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from inferd.bench.inputs import build_inputs, parse_shape
from inferd.bench.report import plot, table, write_csv, write_json
from inferd.bench.results import Distribution, LoadLevel, LoadMode
from inferd.bench.runner import SweepSettings, expand_range, run_sweep


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferd bench", description=Bench.description)
    _add_arguments(parser)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model-name", required=True, help="the model to load")
    parser.add_argument("-x", "--model-version", default="", help="(default: the latest)")
    parser.add_argument("-u", "--url", default="localhost:8001", help="server (%(default)s)")
    parser.add_argument(
        "-i", "--protocol", default="grpc", choices=["grpc"], help="only gRPC (%(default)s)"
    )
    parser.add_argument("-b", "--batch-size", type=int, default=1, help="rows per request (1)")
    parser.add_argument(
        "--streaming", action="store_true",
        help="send requests over the ModelStreamInfer stream, one per channel (needed for "
        "decoupled models, whose requests end at their final response)",
    )  # fmt: skip
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency-range",
        metavar="START:END:STEP",
        help="closed loop: requests kept outstanding (default 1)",
    )
    load.add_argument(
        "--request-rate-range",
        metavar="START:END:STEP",
        help="open loop: requests per second, sent on schedule whether answered or not",
    )
    parser.add_argument(
        "--request-distribution",
        choices=[distribution.value for distribution in Distribution],
        default="constant",
        help="open loop arrivals (%(default)s)",
    )
    parser.add_argument(
        "-p", "--measurement-interval", type=int, default=5000, metavar="MS",
        help="length of each measurement window (%(default)s ms)",
    )  # fmt: skip
    parser.add_argument(
        "-s", "--stability-percentage", type=float, default=10.0,
        help="windows agree when within this percentage (%(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "-r", "--max-trials", type=int, default=10,
        help="windows per level before giving up on stability (%(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=int, default=1000, metavar="MS", help="per level (%(default)s ms)"
    )
    parser.add_argument(
        "--shape", action="append", default=[], metavar="NAME:DIMS",
        help="shape of an input with variable dims, without the batch dim, e.g. INPUT0:16",
    )  # fmt: skip
    parser.add_argument(
        "--input-data", type=Path, metavar="PATH",
        help="a .npy file, a directory of NAME.npy files, or perf_analyzer-style JSON "
        "(default: random data)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="for random data (%(default)s)")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="load processes, each with its own channels (%(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--channels", type=int, default=1,
        help="gRPC connections per load process; a server with several front processes "
        "sharing its port (inferd --frontends N, SO_REUSEPORT) balances connections, not "
        "requests, so give it at least N in all (%(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--request-timeout", type=float, default=30.0, metavar="SECONDS",
        help="per request (%(default)s)",
    )  # fmt: skip
    parser.add_argument("-f", "--latency-report-file", type=Path, metavar="FILE.csv")
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="needs inferd[plot]")


def _levels(args: argparse.Namespace) -> tuple[LoadLevel, ...]:
    if args.request_rate_range:
        distribution = Distribution(args.request_distribution)
        rates = expand_range(args.request_rate_range, integer=False)
        return tuple(LoadLevel(LoadMode.RATE, rate, distribution) for rate in rates)
    counts = expand_range(args.concurrency_range or "1", integer=True)
    return tuple(LoadLevel(LoadMode.CONCURRENCY, count) for count in counts)


def _check(args: argparse.Namespace) -> None:
    if min(args.measurement_interval, args.max_trials, args.workers, args.channels) <= 0:
        raise ValueError(
            "--measurement-interval, --max-trials, --workers and --channels must be "
            f"positive, got {args.measurement_interval}, {args.max_trials}, {args.workers}, "
            f"{args.channels}"
        )
    if args.stability_percentage <= 0:
        raise ValueError(f"--stability-percentage must be > 0, got {args.stability_percentage}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")


def main(argv: Sequence[str] | None = None) -> int:
    return _run(build_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    from inferd.clients import Client, InferdError

    try:
        _check(args)
        levels = _levels(args)
        shapes = dict(parse_shape(text) for text in args.shape)
        with Client(args.url, timeout=max(args.request_timeout, 30.0)) as client:
            metadata = client.model_metadata(args.model_name, args.model_version)
            config = client.model_config(args.model_name, args.model_version)
        decoupled = config.model_transaction_policy.decoupled
        if decoupled and not args.streaming:
            raise ValueError(
                f"model '{args.model_name}' is decoupled: it answers only over a stream; "
                "add --streaming"
            )
        inputs = build_inputs(
            metadata, config.max_batch_size, args.batch_size, shapes, args.input_data, args.seed
        )
    except (ValueError, OSError, InferdError) as exc:
        print(f"inferd bench: {exc}", file=sys.stderr)
        return 2
    settings = SweepSettings(
        url=args.url,
        model=args.model_name,
        version=args.model_version,
        levels=levels,
        measurement_interval_s=args.measurement_interval / 1000,
        stability_percentage=args.stability_percentage,
        max_trials=args.max_trials,
        warmup_s=args.warmup / 1000,
        workers=args.workers,
        channels=args.channels,
        request_timeout_s=args.request_timeout,
        streaming=args.streaming,
        decoupled=decoupled,
    )
    shapes_text = ", ".join(f"{name} {list(array.shape)}" for name, array in inputs.items())
    how = " (decoupled), streaming" if decoupled else ", streaming" if args.streaming else ""
    print(
        f"inferd bench: {args.model_name}{how} at {args.url}, inputs {shapes_text}",
        file=sys.stderr,
    )
    results = run_sweep(settings, inputs, lambda line: print(line, file=sys.stderr, flush=True))
    print(table(results))
    context = {
        "model": args.model_name,
        "version": args.model_version,
        "url": args.url,
        "batch_size": args.batch_size,
        "streaming": args.streaming,
        "decoupled": decoupled,
        "workers": args.workers,
        "channels": args.channels,
        "measurement_interval_ms": args.measurement_interval,
        "stability_percentage": args.stability_percentage,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if args.json:
        write_json(results, args.json, context)
    if args.latency_report_file:
        write_csv(results, args.latency_report_file)
    if args.plot:
        try:
            plot(results, args.plot)
        except RuntimeError as exc:
            print(f"inferd bench: {exc}", file=sys.stderr)
            return 2
    failed = any(result.errors for result in results)
    return 1 if failed else 0


class Bench:
    """``inferd bench``, as the ``inferd`` dispatcher finds it (an ``inferd.commands``
    entry point in pyproject.toml)."""

    help = "load-test a model (inferd bench --help for options)"
    description = (
        "Load-test a model on any server speaking the Open Inference (KServe v2) gRPC "
        "protocol: inferd, Triton, MLServer, KServe. Closed loop (--concurrency-range) or "
        "open loop (--request-rate-range); each level is measured in windows until three "
        "agree within --stability-percentage."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _add_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        return _run(args)


if __name__ == "__main__":
    sys.exit(main())
