"""Statistics accounting as pure logic, and its encoding as tritonclient reads it."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from tritonclient.grpc import service_pb2 as triton_pb

from inferd.engines.statistics import (
    BatchStatistics,
    Duration,
    FailureReason,
    ModelStatistics,
    StatisticsSnapshot,
)
from inferd.server.grpc.statistics import encode_model_statistics


def _success(stats: ModelStatistics, rows: int, scale: int = 1) -> None:
    stats.record_success(
        rows,
        queue_ns=10 * scale,
        compute_input_ns=20 * scale,
        compute_infer_ns=30 * scale,
        compute_output_ns=40 * scale,
        request_ns=100 * scale,
    )


def test_a_fresh_model_reports_zeros() -> None:
    snapshot = ModelStatistics("m", 3, max_batch_size=8).snapshot()
    assert (snapshot.name, snapshot.version, snapshot.max_batch_size) == ("m", 3, 8)
    assert snapshot.last_inference_ms == 0
    assert snapshot.inference_count == snapshot.execution_count == 0
    assert snapshot.success == snapshot.fail == snapshot.queue == Duration(0, 0)
    assert dict(snapshot.failures) == dict.fromkeys(FailureReason, 0)
    assert snapshot.batch_stats == ()
    assert snapshot.pending_requests == 0


def test_inferences_count_rows_and_executions_count_batches() -> None:
    stats = ModelStatistics("m", 1, max_batch_size=8)
    # Unbatched by the server: a batch-4 request and a batch-1 request, one execution each.
    _success(stats, rows=4)
    stats.record_execution(4, 2, 3, 4, now_ms=1_000)
    _success(stats, rows=1, scale=2)
    stats.record_execution(1, 5, 6, 7, now_ms=2_000)

    snapshot = stats.snapshot()
    assert snapshot.inference_count == 5
    assert snapshot.execution_count == 2
    # Per request: the count is the number of successful requests, the ns their sum.
    assert snapshot.success == Duration(2, 300)
    assert snapshot.queue == Duration(2, 30)
    assert snapshot.compute_input == Duration(2, 60)
    assert snapshot.compute_infer == Duration(2, 90)
    assert snapshot.compute_output == Duration(2, 120)
    assert snapshot.last_inference_ms == 2_000


def test_one_execution_of_several_requests_counts_once() -> None:
    stats = ModelStatistics("m", 1, max_batch_size=16)
    _success(stats, rows=1)
    _success(stats, rows=8)
    stats.record_execution(9, 1, 1, 1, now_ms=5)
    snapshot = stats.snapshot()
    assert (snapshot.inference_count, snapshot.execution_count) == (9, 1)
    assert snapshot.success.count == 2


def test_batch_stats_are_per_executed_size_and_sorted() -> None:
    stats = ModelStatistics("m", 1, max_batch_size=8)
    stats.record_execution(8, 1, 2, 3, now_ms=1)
    stats.record_execution(2, 10, 20, 30, now_ms=1)
    stats.record_execution(8, 4, 5, 6, now_ms=1)
    assert stats.snapshot().batch_stats == (
        BatchStatistics(2, Duration(1, 10), Duration(1, 20), Duration(1, 30)),
        BatchStatistics(8, Duration(2, 5), Duration(2, 7), Duration(2, 9)),
    )


def test_batch_size_is_bounded_by_the_models_max_batch_size() -> None:
    stats = ModelStatistics("m", 1, max_batch_size=4)
    for size in (0, 5):
        with pytest.raises(ValueError, match=rf"batch size {size} is outside 1\.\.4"):
            stats.record_execution(size, 0, 0, 0)
    unbatched = ModelStatistics("n", 1, max_batch_size=0)
    unbatched.record_execution(1, 0, 0, 0)  # a model that does not batch executes batch 1
    with pytest.raises(ValueError):
        unbatched.record_execution(2, 0, 0, 0)
    with pytest.raises(ValueError):
        ModelStatistics("m", 1, max_batch_size=-1)


def test_failures_count_per_request_and_by_reason() -> None:
    stats = ModelStatistics("m", 1, max_batch_size=4)
    stats.record_failure(100, FailureReason.BACKEND)
    stats.record_failure(50, FailureReason.REJECTED)
    stats.record_failure(25, FailureReason.BACKEND)
    snapshot = stats.snapshot()
    assert snapshot.fail == Duration(3, 175)
    assert dict(snapshot.failures) == {
        FailureReason.REJECTED: 1,
        FailureReason.CANCELED: 0,
        FailureReason.BACKEND: 2,
        FailureReason.OTHER: 0,
    }
    assert list(snapshot.failures) == list(FailureReason)
    # Failures are neither successes nor inferences, and move no timestamp.
    assert snapshot.success == Duration(0, 0)
    assert snapshot.inference_count == 0
    assert snapshot.last_inference_ms == 0


def test_last_inference_never_moves_backwards_and_defaults_to_the_wall_clock() -> None:
    stats = ModelStatistics("m", 1)
    stats.record_execution(1, 0, 0, 0, now_ms=2_000)
    stats.record_execution(1, 0, 0, 0, now_ms=1_000)
    assert stats.snapshot().last_inference_ms == 2_000

    before = time.time_ns() // 1_000_000
    stats.record_execution(1, 0, 0, 0)
    after = time.time_ns() // 1_000_000
    assert before <= stats.snapshot().last_inference_ms <= after


def test_pending_counts_queued_requests_not_yet_picked_up() -> None:
    stats = ModelStatistics("m", 1)
    stats.request_queued()
    stats.request_queued()
    stats.request_dequeued()
    assert stats.snapshot().pending_requests == 1
    stats.request_dequeued()
    assert stats.snapshot().pending_requests == 0
    with pytest.raises(RuntimeError, match="without a matching request_queued"):
        stats.request_dequeued()


def test_a_snapshot_is_an_immutable_copy() -> None:
    stats = ModelStatistics("m", 1, max_batch_size=2)
    snapshot = stats.snapshot()
    _success(stats, rows=2)
    stats.record_execution(2, 1, 1, 1)
    stats.record_failure(1, FailureReason.OTHER)
    assert snapshot.inference_count == 0 and snapshot.batch_stats == ()
    assert snapshot.failures[FailureReason.OTHER] == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.inference_count = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        snapshot.failures[FailureReason.OTHER] = 1  # type: ignore[index]


def test_concurrent_recording_loses_nothing() -> None:
    stats = ModelStatistics("m", 1, max_batch_size=4)
    threads_count, rounds = 8, 2_000
    start = threading.Barrier(threads_count + 1)
    snapshots: list[StatisticsSnapshot] = []

    def record(worker: int) -> None:
        start.wait()
        for i in range(rounds):
            stats.request_queued()
            stats.request_dequeued()
            _success(stats, rows=1 + worker % 4)
            stats.record_execution(1 + i % 4, 1, 2, 3, now_ms=i)
            stats.record_failure(7, FailureReason.CANCELED)

    def read() -> None:
        start.wait()
        for _ in range(200):
            snapshots.append(stats.snapshot())

    workers = [threading.Thread(target=record, args=(n,)) for n in range(threads_count)]
    reader = threading.Thread(target=read)
    for thread in [*workers, reader]:
        thread.start()
    for thread in [*workers, reader]:
        thread.join()

    total = threads_count * rounds
    snapshot = stats.snapshot()
    assert snapshot.success == Duration(total, 100 * total)
    assert snapshot.queue == Duration(total, 10 * total)
    assert snapshot.inference_count == rounds * sum(1 + n % 4 for n in range(threads_count))
    assert snapshot.execution_count == total
    assert [batch.batch_size for batch in snapshot.batch_stats] == [1, 2, 3, 4]
    assert all(
        batch.compute_infer == Duration(total // 4, 2 * total // 4)
        for batch in snapshot.batch_stats
    )
    assert snapshot.fail == Duration(total, 7 * total)
    assert snapshot.failures[FailureReason.CANCELED] == total
    assert snapshot.pending_requests == 0
    assert snapshot.last_inference_ms == rounds - 1
    # Every snapshot taken mid-flight is consistent: executions agree with batch stats.
    for seen in snapshots:
        assert seen.execution_count == sum(b.compute_infer.count for b in seen.batch_stats)
        assert seen.queue.count == seen.success.count


def _recorded() -> list[StatisticsSnapshot]:
    batched = ModelStatistics("batched", 2, max_batch_size=8)
    _success(batched, rows=3)
    _success(batched, rows=5, scale=3)
    batched.record_execution(8, 11, 12, 13, now_ms=1_700_000_000_123)
    batched.record_execution(3, 21, 22, 23, now_ms=1_700_000_000_000)
    batched.record_failure(999, FailureReason.BACKEND)
    idle = ModelStatistics("idle", 1)
    return [batched.snapshot(), idle.snapshot()]


def _duration(message: triton_pb.StatisticDuration) -> Duration:
    return Duration(message.count, message.ns)


def test_tritonclient_reads_the_encoded_statistics() -> None:
    snapshots = _recorded()
    wire = encode_model_statistics(snapshots).SerializeToString()
    decoded = triton_pb.ModelStatisticsResponse.FromString(wire)

    assert [(s.name, s.version) for s in decoded.model_stats] == [("batched", "2"), ("idle", "1")]
    for stats, snapshot in zip(decoded.model_stats, snapshots, strict=True):
        assert stats.last_inference == snapshot.last_inference_ms
        assert stats.inference_count == snapshot.inference_count
        assert stats.execution_count == snapshot.execution_count
        infer = stats.inference_stats
        assert _duration(infer.success) == snapshot.success
        assert _duration(infer.fail) == snapshot.fail
        assert _duration(infer.queue) == snapshot.queue
        assert _duration(infer.compute_input) == snapshot.compute_input
        assert _duration(infer.compute_infer) == snapshot.compute_infer
        assert _duration(infer.compute_output) == snapshot.compute_output
        # As in Triton's answers, every duration is present; inferd has no cache.
        for field in ("success", "fail", "queue", "cache_hit", "cache_miss"):
            assert infer.HasField(field)
        assert _duration(infer.cache_hit) == _duration(infer.cache_miss) == Duration(0, 0)
        assert [
            BatchStatistics(
                b.batch_size,
                _duration(b.compute_input),
                _duration(b.compute_infer),
                _duration(b.compute_output),
            )
            for b in stats.batch_stats
        ] == list(snapshot.batch_stats)
        assert len(stats.memory_usage) == 0 and len(stats.response_stats) == 0

    batched = decoded.model_stats[0]
    assert batched.last_inference == 1_700_000_000_123
    assert (batched.inference_count, batched.execution_count) == (8, 2)
    assert [b.batch_size for b in batched.batch_stats] == [3, 8]
    assert _duration(batched.inference_stats.fail) == Duration(1, 999)


def test_no_snapshots_encode_an_empty_response() -> None:
    assert encode_model_statistics([]).SerializeToString() == b""


def test_response_statistics_by_index_and_outcome() -> None:
    from inferd.engines.statistics import MAX_RESPONSE_INDEXES, ResponseOutcome

    stats = ModelStatistics("m", 1)
    stats.record_response(0, 100, 10, ResponseOutcome.SUCCESS)
    stats.record_response(0, 200, 20, ResponseOutcome.SUCCESS)
    stats.record_response(1, 50, 5, ResponseOutcome.FAIL)
    stats.record_response(2, 7, 1, ResponseOutcome.EMPTY)
    stats.record_response(2, 9, 1, ResponseOutcome.CANCEL)
    stats.record_response(MAX_RESPONSE_INDEXES, 1, 1, ResponseOutcome.SUCCESS)  # not kept
    first, second, third = stats.snapshot().response_stats
    assert (first.index, first.compute_infer, first.compute_output) == (
        0, Duration(2, 300), Duration(2, 30),
    )  # fmt: skip
    assert first.success == Duration(2, 330)
    assert (second.index, second.fail, second.success) == (1, Duration(1, 55), Duration())
    assert second.compute_infer == Duration()  # only successful responses count there
    assert (third.empty_response, third.cancel) == (Duration(1, 8), Duration(1, 10))
