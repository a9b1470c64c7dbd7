"""Reporting a sweep: a terminal table, JSON, perf_analyzer-style CSV and a PNG plot."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from inferd.bench.results import LatencySummary, LevelResult, LoadMode


def _ms(microseconds: float) -> str:
    return f"{microseconds / 1000:.2f}"


def _streamed(results: Sequence[LevelResult]) -> bool:
    """Whether the results time each response (streaming to a decoupled model)."""
    return any(result.first_response is not None for result in results)


def _response_cells(result: LevelResult) -> list[str]:
    first, inter = result.first_response, result.inter_response
    if first is None or inter is None:
        return ["-"] * 5
    return [
        f"{result.response_throughput or 0.0:,.1f}", _ms(first.p50_us), _ms(first.p99_us),
        _ms(inter.p50_us), _ms(inter.p99_us),
    ]  # fmt: skip


def table(results: Sequence[LevelResult]) -> str:
    """One row per level. Streaming to a decoupled model adds responses per second and
    the first-response and inter-response latencies (p50, p99); latency then runs to
    each request's final response."""
    streamed = _streamed(results)
    header = [
        "load", "req/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms", "errors",
        "server queue / infer / overhead ms", "load CPU", "stable",
    ]  # fmt: skip
    if streamed:
        header[7:7] = ["resp/s", "first p50 ms", "first p99 ms", "inter p50 ms", "inter p99 ms"]
    rows = [header]
    for result in results:
        latency = result.latency
        server = result.server
        breakdown = (
            f"{_ms(server.queue_us)} / {_ms(server.compute_infer_us)} / {_ms(server.overhead_us)}"
            if server is not None
            else "-"
        )
        errors = ", ".join(f"{code} {count}" for code, count in sorted(result.errors.items()))
        row = [
            result.level.label(), f"{result.throughput:,.1f}", _ms(latency.p50_us),
            _ms(latency.p90_us), _ms(latency.p95_us), _ms(latency.p99_us), _ms(latency.max_us),
            errors or "0", breakdown, f"{result.client_cpu:.0%}",
            "yes" if result.stable else f"no ({result.windows} windows)",
        ]  # fmt: skip
        if streamed:
            row[7:7] = _response_cells(result)
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    warnings = [
        f"! {result.level.label()}: {text}" for result in results for text in result.warnings
    ]
    return "\n".join(lines + warnings)


def _jsonable(result: LevelResult) -> dict:
    data = asdict(result)
    data["level"] = {
        "mode": result.level.mode.value,
        "value": result.level.value,
        "distribution": result.level.distribution.value,
    }
    if result.server is not None:
        data["server"]["overhead_us"] = result.server.overhead_us
    data["warnings"] = list(result.warnings)
    return data


def write_json(results: Sequence[LevelResult], path: Path, context: dict) -> None:
    document = {"context": context, "results": [_jsonable(result) for result in results]}
    path.write_text(json.dumps(document, indent=2) + "\n")


# perf_analyzer's CSV column names where inferd measures the same thing (latencies in
# microseconds, server times per request), then inferd's own columns.
_CSV_COLUMNS = [
    "Inferences/Second", "Server Queue", "Server Compute Input", "Server Compute Infer",
    "Server Compute Output", "p50 latency", "p90 latency", "p95 latency", "p99 latency",
    "Avg latency", "Max latency", "Server Overhead", "Errors", "Client CPU", "Stable",
]  # fmt: skip


# Streaming to a decoupled model: perf_analyzer's "Response Throughput" after
# "Inferences/Second", and the per-response latencies at the end, named as the latency
# columns are.
_RESPONSE_THROUGHPUT = "Response Throughput"
_STATISTICS = ["p50", "p90", "p95", "p99", "Avg", "Max"]
_RESPONSE_COLUMNS = [
    f"{statistic} {name} latency"
    for name in ("first response", "inter response")
    for statistic in _STATISTICS
]


def _summary_cells(summary: LatencySummary | None) -> list[int | str]:
    if summary is None:
        return [""] * len(_STATISTICS)
    return [
        round(summary.p50_us), round(summary.p90_us), round(summary.p95_us),
        round(summary.p99_us), round(summary.avg_us), round(summary.max_us),
    ]  # fmt: skip


def write_csv(results: Sequence[LevelResult], path: Path) -> None:
    rate_mode = any(result.level.mode is LoadMode.RATE for result in results)
    first = "Request Rate" if rate_mode else "Concurrency"
    streamed = _streamed(results)
    columns = [first, *_CSV_COLUMNS]
    if streamed:
        columns[2:2] = [_RESPONSE_THROUGHPUT]
        columns += _RESPONSE_COLUMNS
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for result in results:
            server = result.server
            latency = result.latency
            level = result.level.value
            row: list[int | str] = [
                f"{level:g}" if rate_mode else int(level), f"{result.throughput:.2f}",
                *(
                    [round(server.queue_us), round(server.compute_input_us),
                     round(server.compute_infer_us), round(server.compute_output_us)]
                    if server is not None else ["", "", "", ""]
                ),
                round(latency.p50_us), round(latency.p90_us), round(latency.p95_us),
                round(latency.p99_us), round(latency.avg_us), round(latency.max_us),
                round(server.overhead_us) if server is not None else "",
                sum(result.errors.values()), f"{result.client_cpu:.3f}", int(result.stable),
            ]  # fmt: skip
            if streamed:
                responses = result.response_throughput
                row[2:2] = [f"{responses:.2f}" if responses is not None else ""]
                row += _summary_cells(result.first_response)
                row += _summary_cells(result.inter_response)
            writer.writerow(row)


def plot(results: Sequence[LevelResult], path: Path) -> None:
    """Throughput against p99 latency across the sweep, and each level's latency
    percentiles. matplotlib is an optional extra: ``pip install 'inferd[plot]'``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'inferd[plot]'") from None
    figure, (sweep, spread) = pyplot.subplots(1, 2, figsize=(11, 4.5))
    throughput = [result.throughput for result in results]
    p99 = [result.latency.p99_us / 1000 for result in results]
    sweep.plot(throughput, p99, marker="o")
    for result, x, y in zip(results, throughput, p99, strict=True):
        sweep.annotate(result.level.label(), (x, y), fontsize=7)
    sweep.set(xlabel="throughput (req/s)", ylabel="p99 latency (ms)", title="sweep")
    names = ["p50", "p90", "p95", "p99", "max"]
    for result in results:
        latency = result.latency
        values = [latency.p50_us, latency.p90_us, latency.p95_us, latency.p99_us, latency.max_us]
        spread.plot(names, [value / 1000 for value in values], marker="o",
                    label=result.level.label())  # fmt: skip
    spread.set(ylabel="latency (ms)", title="latency distribution")
    spread.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
