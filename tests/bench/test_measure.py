"""The load harness's arithmetic: percentiles, merging, stability, server breakdown, verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.bench.measure import (
    is_stable,
    level_result,
    merge_windows,
    server_breakdown,
    stream_timing,
    summarize_latencies,
)
from inferd.bench.results import (
    Distribution,
    LatencySummary,
    LoadLevel,
    LoadMode,
    ServerBreakdown,
    StreamTiming,
    WindowResult,
)
from inferd.protos import grpc_service_pb2 as pb

CONCURRENCY_4 = LoadLevel(LoadMode.CONCURRENCY, 4)
RATE_100 = LoadLevel(LoadMode.RATE, 100.0, Distribution.POISSON)


def _window(
    requests: int = 100,
    latency_us: float = 1000.0,
    *,
    errors: dict[str, int] | None = None,
    sent: int = 0,
    late_sends: int = 0,
    client_cpu_s: float = 0.0,
) -> WindowResult:
    """A one-second window of ``requests`` successes, each ``latency_us`` long."""
    return WindowResult(
        1.0, np.full(requests, latency_us), dict(errors or {}), sent, late_sends, client_cpu_s
    )


# Percentiles.


def test_percentiles_of_one_to_a_hundred_are_nearest_rank() -> None:
    samples = np.arange(100, 0, -1, dtype=np.float64)  # unsorted on purpose
    summary = summarize_latencies(samples)
    assert summary == LatencySummary(
        count=100, avg_us=50.5, p50_us=50, p90_us=90, p95_us=95, p99_us=99, max_us=100
    )


def test_percentiles_of_few_samples_are_always_samples() -> None:
    # n = 10: ranks ceil(5) = 5, ceil(9) = 9, ceil(9.5) = 10, ceil(9.9) = 10.
    summary = summarize_latencies(np.arange(10, 110, 10, dtype=np.float64))
    assert (summary.p50_us, summary.p90_us, summary.p95_us, summary.p99_us) == (50, 90, 100, 100)
    assert summary.max_us == 100
    # n = 3: p50 is rank 2; everything above rank 2 is the maximum.
    summary = summarize_latencies(np.array([7.0, 1.0, 4.0]))
    assert (summary.p50_us, summary.p90_us, summary.p99_us, summary.max_us) == (4, 7, 7, 7)
    assert summary.avg_us == pytest.approx(4.0)


def test_one_sample_is_every_percentile() -> None:
    summary = summarize_latencies(np.array([42.0]))
    assert summary == LatencySummary(1, 42.0, 42.0, 42.0, 42.0, 42.0, 42.0)


def test_no_samples_summarize_to_zeros() -> None:
    assert summarize_latencies(np.empty(0)) == LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def test_integer_latencies_are_accepted() -> None:
    assert summarize_latencies(np.array([3, 1, 2], dtype=np.int64)).p50_us == 2.0


# Merging.


def test_merge_sums_counts_and_joins_latencies() -> None:
    first = WindowResult(
        1.0, np.array([1.0, 2.0]), {"UNAVAILABLE": 1}, sent=4, late_sends=1, client_cpu_s=0.5
    )
    second = WindowResult(
        2.0,
        np.array([3.0]),
        {"UNAVAILABLE": 2, "INTERNAL": 1},
        sent=5,
        late_sends=0,
        client_cpu_s=0.25,
    )
    merged = merge_windows([first, second])
    assert merged.duration_s == 3.0
    assert merged.latencies_us.tolist() == [1.0, 2.0, 3.0]
    assert merged.errors == {"UNAVAILABLE": 3, "INTERNAL": 1}
    assert (merged.sent, merged.late_sends, merged.client_cpu_s) == (9, 1, 0.75)
    assert merged.throughput == 1.0
    assert first.errors == {"UNAVAILABLE": 1}, "merging must not change its inputs"


def test_merge_of_nothing_is_empty() -> None:
    merged = merge_windows([])
    assert merged.duration_s == 0.0
    assert len(merged.latencies_us) == 0
    assert merged.throughput == 0.0


def test_merge_joins_response_samples_and_sums_responses() -> None:
    first = WindowResult(
        1.0, np.array([10.0]), first_response_us=np.array([4.0]),
        inter_response_us=np.array([1.0, 2.0]), responses=3,
    )  # fmt: skip
    second = WindowResult(1.0, np.array([20.0]), first_response_us=np.array([5.0]), responses=1)
    merged = merge_windows([first, second])
    assert merged.first_response_us.tolist() == [4.0, 5.0]
    assert merged.inter_response_us.tolist() == [1.0, 2.0]
    assert merged.responses == 4


# Streamed requests.


def test_stream_timing_measures_from_the_send() -> None:
    # Sent at 10 s; responses at +1, +3 and +6 ms; the empty final one at +7 ms.
    timing = stream_timing(10.0, [10.001, 10.003, 10.006], 10.007)
    assert timing.latency_us == pytest.approx(7000)
    assert timing.first_response_us == pytest.approx(1000)
    assert timing.inter_response_us == pytest.approx((2000, 3000))


def test_one_response_has_no_inter_response_time() -> None:
    # A non-decoupled model's one response is both the first and the final.
    assert stream_timing(1.0, [1.5], 1.5) == StreamTiming(500_000.0, 500_000.0, ())


def test_a_request_without_responses_has_only_a_latency() -> None:
    assert stream_timing(1.0, [], 1.25) == StreamTiming(250_000.0, None, ())


def test_response_times_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError, match="arrival order"):
        stream_timing(0.0, [2.0, 1.0], 3.0)


# Stability.


def test_three_close_windows_are_stable() -> None:
    windows = [_window(100, 1000), _window(105, 1040), _window(98, 1010)]
    assert is_stable(windows, 10)


def test_fewer_than_three_windows_are_never_stable() -> None:
    assert not is_stable([], 10)
    assert not is_stable([_window(), _window()], 10)


def test_throughput_spread_beyond_the_percentage_is_unstable() -> None:
    # max / min = 112 / 100 > 1.10.
    windows = [_window(100), _window(112), _window(105)]
    assert not is_stable(windows, 10)
    assert is_stable(windows, 15)


def test_average_latency_spread_beyond_the_percentage_is_unstable() -> None:
    windows = [_window(100, 1000), _window(100, 1200), _window(100, 1000)]
    assert not is_stable(windows, 10)
    assert is_stable(windows, 20)


def test_only_the_last_three_windows_count() -> None:
    windows = [_window(10, 9000), _window(100), _window(101), _window(99)]
    assert is_stable(windows, 10)


def test_a_window_without_successes_is_unstable() -> None:
    windows = [_window(100), _window(0), _window(100)]
    assert not is_stable(windows, 1000)


def test_stability_judges_average_latency_not_the_tail() -> None:
    # Same mean, very different p99: perf_analyzer (no --percentile) calls this stable.
    steady = np.full(100, 1000.0)
    spiky = np.concatenate([np.full(99, 990.0), [1990.0]])
    windows = [WindowResult(1.0, steady), WindowResult(1.0, spiky), WindowResult(1.0, steady)]
    assert is_stable(windows, 5)


# Server breakdown.


def _stats(
    success: tuple[int, int],
    queue_ns: int,
    input_ns: int,
    infer_ns: int,
    output_ns: int,
    inferences: int,
    executions: int,
) -> pb.ModelStatistics:
    count, total_ns = success
    return pb.ModelStatistics(
        name="simple",
        version="1",
        inference_count=inferences,
        execution_count=executions,
        inference_stats=pb.InferStatistics(
            success=pb.StatisticDuration(count=count, ns=total_ns),
            queue=pb.StatisticDuration(count=count, ns=queue_ns),
            compute_input=pb.StatisticDuration(count=count, ns=input_ns),
            compute_infer=pb.StatisticDuration(count=count, ns=infer_ns),
            compute_output=pb.StatisticDuration(count=count, ns=output_ns),
        ),
    )


def test_breakdown_averages_the_deltas_per_successful_request() -> None:
    before = _stats((10, 1_000_000), 100_000, 50_000, 500_000, 20_000, 10, 5)
    # 40 more requests in 10 executions: 4 ms total, 1 ms queued, 2 ms in the model...
    after = _stats((50, 161_000_000), 40_100_000, 8_050_000, 80_500_000, 4_020_000, 50, 15)
    breakdown = server_breakdown(before, after)
    assert breakdown == ServerBreakdown(
        requests=40,
        executions=10,
        request_us=4000.0,
        queue_us=1000.0,
        compute_input_us=200.0,
        compute_infer_us=2000.0,
        compute_output_us=100.0,
    )
    assert breakdown.overhead_us == pytest.approx(700.0)


def test_breakdown_needs_both_snapshots_and_a_success() -> None:
    stats = _stats((10, 1_000_000), 0, 0, 0, 0, 10, 10)
    assert server_breakdown(None, stats) is None
    assert server_breakdown(stats, None) is None
    assert server_breakdown(stats, stats) is None


def test_breakdown_of_restarted_statistics_is_none() -> None:
    before = _stats((50, 5_000_000), 0, 0, 0, 0, 50, 50)
    after = _stats((60, 1_000_000), 0, 0, 0, 0, 60, 60)  # success.ns went backwards
    assert server_breakdown(before, after) is None


# Level results and their warnings.


def test_level_reports_the_last_three_windows() -> None:
    warmup = _window(10, 5000, client_cpu_s=0.1)
    steady = [_window(100, 1000, client_cpu_s=0.5) for _ in range(3)]
    server = ServerBreakdown(300, 100, 900.0, 100.0, 10.0, 700.0, 10.0)
    result = level_result(CONCURRENCY_4, [warmup, *steady], True, server, workers=1)
    assert result.level is CONCURRENCY_4
    assert result.stable
    assert result.windows == 4
    assert result.throughput == 100.0
    assert result.latency.count == 300
    assert result.latency.max_us == 1000.0
    assert result.client_cpu == pytest.approx(0.5)
    assert result.server is server
    assert result.errors == {}
    assert result.warnings == ()


def test_level_with_fewer_windows_reports_them_all() -> None:
    result = level_result(CONCURRENCY_4, [_window(10), _window(20)], False, None, workers=1)
    assert result.latency.count == 30
    assert result.throughput == 15.0


def test_failed_requests_are_a_warning() -> None:
    windows = [
        _window(errors={"UNAVAILABLE": 2}),
        _window(errors={"UNAVAILABLE": 1, "DEADLINE_EXCEEDED": 1}),
        _window(),
    ]
    result = level_result(CONCURRENCY_4, windows, True, None, workers=1)
    assert result.errors == {"UNAVAILABLE": 3, "DEADLINE_EXCEEDED": 1}
    assert result.warnings == ("4 requests failed: UNAVAILABLE: 3, DEADLINE_EXCEEDED: 1",)


def test_instability_is_a_warning_naming_the_window_count() -> None:
    windows = [_window() for _ in range(10)]
    result = level_result(CONCURRENCY_4, windows, False, None, workers=1)
    assert not result.stable
    assert result.warnings == ("not stable after 10 measurement windows",)


def test_a_cpu_bound_load_generator_is_a_warning() -> None:
    windows = [_window(client_cpu_s=0.5), _window(client_cpu_s=1.9), _window(client_cpu_s=0.5)]
    (warning,) = level_result(CONCURRENCY_4, windows, True, None, workers=2).warnings
    assert "CPU-bound" in warning
    assert "1.90 cores" in warning
    # The same load spread over three workers is below 0.9 of a core each.
    assert level_result(CONCURRENCY_4, windows, True, None, workers=3).warnings == ()


def test_an_open_loop_that_falls_behind_its_rate_is_a_warning() -> None:
    windows = [_window(sent=80) for _ in range(3)]  # 240 of 300 scheduled
    result = level_result(RATE_100, windows, True, None, workers=1)
    assert result.warnings == ("could not keep the requested rate: sent 240 of 300",)


def test_an_open_loop_that_keeps_its_rate_has_no_warning() -> None:
    windows = [_window(sent=99, late_sends=0) for _ in range(3)]
    assert level_result(RATE_100, windows, True, None, workers=1).warnings == ()


def test_late_sends_above_one_percent_are_a_warning() -> None:
    windows = [_window(sent=100, late_sends=2) for _ in range(3)]  # 6 of 300
    (warning,) = level_result(RATE_100, windows, True, None, workers=1).warnings
    assert warning.startswith("6 of 300 sends (2.0%)")
    ok = [_window(sent=100, late_sends=1) for _ in range(3)]  # exactly 1%
    assert level_result(RATE_100, ok, True, None, workers=1).warnings == ()


def test_closed_loop_ignores_send_accounting() -> None:
    windows = [_window(sent=1, late_sends=1) for _ in range(3)]
    assert level_result(CONCURRENCY_4, windows, True, None, workers=1).warnings == ()


def test_decoupled_level_reports_response_latencies_and_throughput() -> None:
    windows = [
        WindowResult(
            1.0,
            np.full(10, 9000.0),
            first_response_us=np.full(10, 1000.0),
            inter_response_us=np.arange(1, 31, dtype=np.float64),
            responses=40,
        )
        for _ in range(3)
    ]
    result = level_result(CONCURRENCY_4, windows, True, None, workers=1, decoupled=True)
    assert result.throughput == 10.0
    assert result.response_throughput == 40.0
    assert result.first_response is not None and result.inter_response is not None
    assert result.first_response.count == 30
    assert result.first_response.p99_us == 1000.0
    assert result.inter_response.count == 90
    assert (result.inter_response.p50_us, result.inter_response.max_us) == (15.0, 30.0)


def test_other_levels_leave_response_latencies_out() -> None:
    result = level_result(CONCURRENCY_4, [_window()] * 3, True, None, workers=1)
    assert result.first_response is None
    assert result.inter_response is None
    assert result.response_throughput is None
