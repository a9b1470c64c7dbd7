"""What the load harness's measurements come to: latency percentiles, a streamed
request's response times, merged windows, the stability rule, the server's own time
breakdown and the verdict on one load level.

Pure functions over ``inferd.bench.results`` values and ``ModelStatistics`` messages: no
I/O, no clocks, so the runner decides when to measure and these only do arithmetic.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ..protos import grpc_service_pb2 as pb
from .results import (
    LatencySummary,
    LevelResult,
    LoadLevel,
    LoadMode,
    ServerBreakdown,
    StreamTiming,
    WindowResult,
)

STABILITY_WINDOWS = 3  # perf_analyzer's stability_window: judge and report the last three

# Warning thresholds.
_CPU_BOUND_FRACTION = 0.9  # of one core per worker process
_RATE_SHORTFALL = 0.95  # open loop: fraction of the scheduled sends that must go out
_LATE_SEND_FRACTION = 0.01  # open loop: fraction of sends allowed to be late


def _nearest_rank(ordered: np.ndarray, percentile: int) -> float:
    # ceil(p/100 * n) in integers: 0.9 * 100 is 90.00000000000001 in floating point.
    rank = max(1, -(-percentile * len(ordered) // 100))
    return float(ordered[rank - 1])


def summarize_latencies(latencies_us: np.ndarray) -> LatencySummary:
    """Average, p50/p90/p95/p99 and maximum of request latencies in microseconds.

    Percentiles use the nearest-rank definition: the value at 1-based rank
    ``ceil(p/100 * n)`` of the sorted samples, always one of the samples (1..100 gives
    p50 = 50, p99 = 99). perf_analyzer instead takes ``sorted[int(p/100 * (n-1) + 0.5)]``
    (0-based), which can land one rank higher (p50 of 1..100 is 51 there). Empty input
    gives all zeros with count 0.
    """
    if len(latencies_us) == 0:
        return LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    ordered = np.sort(np.asarray(latencies_us, dtype=np.float64), kind="stable")
    return LatencySummary(
        count=len(ordered),
        avg_us=float(ordered.mean()),
        p50_us=_nearest_rank(ordered, 50),
        p90_us=_nearest_rank(ordered, 90),
        p95_us=_nearest_rank(ordered, 95),
        p99_us=_nearest_rank(ordered, 99),
        max_us=float(ordered[-1]),
    )


def stream_timing(began: float, response_times: Sequence[float], finished: float) -> StreamTiming:
    """A streamed request's times from clock readings in seconds: sent at ``began``,
    responses with outputs at ``response_times`` (in arrival order), final response at
    ``finished``.

    Latency runs to the final response, which for a decoupled model may be an empty one
    after the last response with outputs (perf_analyzer likewise ends a request at its
    final response). First-response latency runs to the first response with outputs;
    inter-response times are the gaps between consecutive ones, so a request with ``n``
    responses gives ``n - 1`` of them and the empty final response gives none.
    """
    gaps = tuple((later - earlier) * 1e6 for earlier, later in itertools.pairwise(response_times))
    if any(gap < 0 for gap in gaps):
        raise ValueError("response times must be in arrival order")
    first = (response_times[0] - began) * 1e6 if response_times else None
    return StreamTiming((finished - began) * 1e6, first, gaps)


def _joined(arrays: Sequence[np.ndarray]) -> np.ndarray:
    parts = [np.asarray(array, dtype=np.float64) for array in arrays]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)


def merge_windows(windows: Sequence[WindowResult]) -> WindowResult:
    """One window covering them all: durations, counts and CPU summed, samples joined."""
    errors: dict[str, int] = {}
    for window in windows:
        for status, count in window.errors.items():
            errors[status] = errors.get(status, 0) + count
    return WindowResult(
        duration_s=sum(window.duration_s for window in windows),
        latencies_us=_joined([window.latencies_us for window in windows]),
        errors=errors,
        sent=sum(window.sent for window in windows),
        late_sends=sum(window.late_sends for window in windows),
        client_cpu_s=sum(window.client_cpu_s for window in windows),
        first_response_us=_joined([window.first_response_us for window in windows]),
        inter_response_us=_joined([window.inter_response_us for window in windows]),
        responses=sum(window.responses for window in windows),
    )


def _within(values: Sequence[float], stability_percentage: float) -> bool:
    return max(values) / min(values) <= 1 + stability_percentage / 100


def is_stable(windows: Sequence[WindowResult], stability_percentage: float) -> bool:
    """perf_analyzer's rule (``InferenceProfiler::DetermineStability``): over the last
    three windows, no window without a successful request, and both throughput and
    average latency vary by at most ``stability_percentage``, measured as max / min.

    perf_analyzer judges average latency unless ``--percentile`` is given; so does this.
    Fewer than three windows are never stable.
    """
    if len(windows) < STABILITY_WINDOWS:
        return False
    last = windows[-STABILITY_WINDOWS:]
    throughputs = [window.throughput for window in last]
    if min(throughputs) <= 0:
        return False
    latencies = [float(np.mean(window.latencies_us)) for window in last]
    return _within(throughputs, stability_percentage) and _within(latencies, stability_percentage)


def server_breakdown(
    before: pb.ModelStatistics | None, after: pb.ModelStatistics | None
) -> ServerBreakdown | None:
    """Average server-side microseconds per successful request between two snapshots.

    None when either snapshot is missing, when no request succeeded in between, or when a
    counter went backwards (the model was reloaded and its statistics restarted).
    """
    if before is None or after is None:
        return None
    start, end = before.inference_stats, after.inference_stats
    requests = end.success.count - start.success.count
    executions = after.execution_count - before.execution_count
    durations_ns = [
        end.success.ns - start.success.ns,
        end.queue.ns - start.queue.ns,
        end.compute_input.ns - start.compute_input.ns,
        end.compute_infer.ns - start.compute_infer.ns,
        end.compute_output.ns - start.compute_output.ns,
    ]
    inferences = after.inference_count - before.inference_count
    if requests <= 0 or min(executions, inferences, *durations_ns) < 0:
        return None
    request_us, queue_us, input_us, infer_us, output_us = (
        ns / requests / 1000 for ns in durations_ns
    )
    return ServerBreakdown(
        requests=requests,
        executions=executions,
        request_us=request_us,
        queue_us=queue_us,
        compute_input_us=input_us,
        compute_infer_us=infer_us,
        compute_output_us=output_us,
    )


def _error_warning(errors: dict[str, int]) -> str:
    total = sum(errors.values())
    parts = ", ".join(
        f"{status}: {count}"
        for status, count in sorted(errors.items(), key=lambda item: (-item[1], item[0]))
    )
    return f"{total} request{'s' if total != 1 else ''} failed: {parts}"


def _warnings(
    level: LoadLevel,
    reported: Sequence[WindowResult],
    merged: WindowResult,
    stable: bool,
    windows_run: int,
    workers: int,
) -> list[str]:
    warnings: list[str] = []
    failed = {status: count for status, count in merged.errors.items() if count}
    if failed:
        warnings.append(_error_warning(failed))
    if not stable:
        warnings.append(
            f"not stable after {windows_run} measurement window{'s' if windows_run != 1 else ''}"
        )
    # A load generator short of CPU measures its own queueing, not the server's.
    cpu_limit = _CPU_BOUND_FRACTION * workers
    busiest = max(
        (window.client_cpu_s / window.duration_s for window in reported if window.duration_s > 0),
        default=0.0,
    )
    if busiest > cpu_limit:
        warnings.append(
            f"load generator was CPU-bound: {busiest:.2f} cores used by {workers} "
            f"worker{'s' if workers != 1 else ''}; add workers or results understate the server"
        )
    if level.mode is LoadMode.RATE:
        scheduled = level.value * merged.duration_s
        if merged.sent < _RATE_SHORTFALL * scheduled:
            warnings.append(
                f"could not keep the requested rate: sent {merged.sent} of {round(scheduled)}"
            )
        if merged.late_sends > _LATE_SEND_FRACTION * merged.sent:
            share = merged.late_sends / merged.sent if merged.sent else 1.0
            warnings.append(
                f"{merged.late_sends} of {merged.sent} sends ({share:.1%}) went out more than "
                "1 ms behind schedule"
            )
    return warnings


def level_result(
    level: LoadLevel,
    windows: Sequence[WindowResult],
    stable: bool,
    server: ServerBreakdown | None,
    workers: int,
    decoupled: bool = False,
) -> LevelResult:
    """What one load level came to, reported over its last three windows (or all of them
    if it ran fewer). ``workers`` is the number of load processes, each allowed up to 0.9
    of a core before the result is flagged as limited by the load generator.
    ``decoupled`` (streaming to a decoupled model) adds the first-response and
    inter-response summaries and the response throughput.

    Failed requests, instability, a CPU-bound load generator and (open loop) a missed
    send schedule each add a warning: nothing that makes the numbers doubtful is hidden.
    """
    reported = windows[-STABILITY_WINDOWS:]
    merged = merge_windows(reported)
    responses = None
    if decoupled:
        responses = merged.responses / merged.duration_s if merged.duration_s > 0 else 0.0
    return LevelResult(
        level=level,
        stable=stable,
        windows=len(windows),
        throughput=merged.throughput,
        latency=summarize_latencies(merged.latencies_us),
        errors=merged.errors,
        sent=merged.sent,
        late_sends=merged.late_sends,
        client_cpu=merged.client_cpu_s / merged.duration_s if merged.duration_s > 0 else 0.0,
        server=server,
        warnings=tuple(_warnings(level, reported, merged, stable, len(windows), workers)),
        first_response=summarize_latencies(merged.first_response_us) if decoupled else None,
        inter_response=summarize_latencies(merged.inter_response_us) if decoupled else None,
        response_throughput=responses,
    )
