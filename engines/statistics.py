"""Per model-version statistics with Triton's semantics, kept by the engine.

Both the ModelStatistics RPC and the Prometheus metrics read the same snapshot, so the two
can never disagree. No gRPC, protobuf or Prometheus here: the server encodes snapshots.

What is counted, as in Triton (``InferenceStatsAggregator`` and the statistics extension):

- per request that succeeded: ``success`` {count, request duration}, ``inference_count``
  += its rows (a request of batch 4 counts 4), and the queue and compute durations. The
  queue and compute durations carry the success count as their count.
- per request that failed: ``fail`` {count, duration} and one failure for its reason.
- per model execution (a batch, possibly of several requests): ``execution_count``,
  ``last_inference`` (wall-clock milliseconds since the epoch) and the batch statistics
  of the executed batch size.
- ``pending``: requests queued and not yet picked up by an execution instance.
- per response of a streamed decoupled request, by its index within the request
  (``response_stats``): how long the model took to produce it (``compute_infer``, since
  the execution started or the previous response) and to hand it on (``compute_output``),
  and its outcome: success, fail (an error response), empty (a final flag alone) or
  cancel (the client had gone). Indexes from ``MAX_RESPONSE_INDEXES`` on are not kept,
  so a model that streams without end cannot grow memory.

Response-cache statistics stay zero: inferd has no response cache.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class FailureReason(enum.Enum):
    """Why a request failed: the ``reason`` label of Triton's failure metric."""

    REJECTED = "REJECTED"  # timed out in the scheduler's queue
    CANCELED = "CANCELED"  # the client went away
    BACKEND = "BACKEND"  # the model failed while executing
    OTHER = "OTHER"  # anything else


@dataclass(frozen=True, slots=True)
class Duration:
    """A count and the cumulative nanoseconds it took (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True, slots=True)
class BatchStatistics:
    """The executions of one batch size; each duration's count is their number."""

    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class ResponseOutcome(enum.Enum):
    SUCCESS = "success"
    FAIL = "fail"
    EMPTY = "empty_response"
    CANCEL = "cancel"


MAX_RESPONSE_INDEXES = 1024


@dataclass(frozen=True, slots=True)
class ResponseStatistics:
    """The responses at one index of decoupled requests (Triton's InferResponseStatistics)."""

    index: int
    compute_infer: Duration
    compute_output: Duration
    success: Duration
    fail: Duration
    empty_response: Duration
    cancel: Duration


class _ResponseAccumulator:
    __slots__ = ("infer", "outcomes", "output")

    def __init__(self) -> None:
        self.infer = [0, 0]  # count, ns
        self.output = [0, 0]
        self.outcomes = {outcome: [0, 0] for outcome in ResponseOutcome}

    def freeze(self, index: int) -> ResponseStatistics:
        outcomes = {outcome: Duration(*totals) for outcome, totals in self.outcomes.items()}
        return ResponseStatistics(
            index,
            Duration(*self.infer),
            Duration(*self.output),
            outcomes[ResponseOutcome.SUCCESS],
            outcomes[ResponseOutcome.FAIL],
            outcomes[ResponseOutcome.EMPTY],
            outcomes[ResponseOutcome.CANCEL],
        )


@dataclass(frozen=True, slots=True)
class StatisticsSnapshot:
    """A consistent copy of one model version's statistics, taken under its lock."""

    name: str
    version: int
    max_batch_size: int  # 0: the model does not batch (its executions have batch size 1)
    last_inference_ms: int  # 0 until the first execution
    inference_count: int
    execution_count: int
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    failures: Mapping[FailureReason, int]  # every reason, in FailureReason's order
    batch_stats: tuple[BatchStatistics, ...]  # sorted by batch size
    pending_requests: int
    response_stats: tuple[ResponseStatistics, ...] = ()  # by index; decoupled models only


class _BatchAccumulator:
    __slots__ = ("count", "infer_ns", "input_ns", "output_ns")

    def __init__(self) -> None:
        self.count = 0
        self.input_ns = 0
        self.infer_ns = 0
        self.output_ns = 0

    def freeze(self, batch_size: int) -> BatchStatistics:
        return BatchStatistics(
            batch_size,
            Duration(self.count, self.input_ns),
            Duration(self.count, self.infer_ns),
            Duration(self.count, self.output_ns),
        )


class ModelStatistics:
    """Thread-safe accumulators for one model version.

    Recording is O(1) under one lock. Memory is bounded: batch statistics are kept per
    batch size, and a batch size above the model's ``max_batch_size`` is refused.
    """

    def __init__(self, name: str, version: int, max_batch_size: int = 0) -> None:
        if max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, got {max_batch_size}")
        self.name = name
        self.version = version
        self.max_batch_size = max_batch_size
        self._largest_batch = max(1, max_batch_size)
        self._lock = threading.Lock()
        self._last_inference_ms = 0
        self._inference_count = 0
        self._execution_count = 0
        self._success_count = 0
        self._request_ns = 0
        self._queue_ns = 0
        self._compute_input_ns = 0
        self._compute_infer_ns = 0
        self._compute_output_ns = 0
        self._fail_count = 0
        self._fail_ns = 0
        self._failures = dict.fromkeys(FailureReason, 0)
        self._batches: dict[int, _BatchAccumulator] = {}
        self._responses: dict[int, _ResponseAccumulator] = {}
        self._pending = 0

    def record_success(
        self,
        rows: int,
        queue_ns: int,
        compute_input_ns: int,
        compute_infer_ns: int,
        compute_output_ns: int,
        request_ns: int,
    ) -> None:
        """One request answered successfully; ``rows`` is its batch size (1 if unbatched)."""
        with self._lock:
            self._success_count += 1
            self._inference_count += rows
            self._request_ns += request_ns
            self._queue_ns += queue_ns
            self._compute_input_ns += compute_input_ns
            self._compute_infer_ns += compute_infer_ns
            self._compute_output_ns += compute_output_ns

    def record_batch_success(
        self,
        requests: int,
        rows: int,
        queue_ns: int,
        request_ns: int,
        compute_input_ns: int,
        compute_infer_ns: int,
        compute_output_ns: int,
    ) -> None:
        """``requests`` of one batch answered successfully, under one lock: ``rows``,
        ``queue_ns`` and ``request_ns`` summed over them, the compute times the batch's
        (each request's share is the whole, as for ``record_success``)."""
        with self._lock:
            self._success_count += requests
            self._inference_count += rows
            self._request_ns += request_ns
            self._queue_ns += queue_ns
            self._compute_input_ns += compute_input_ns * requests
            self._compute_infer_ns += compute_infer_ns * requests
            self._compute_output_ns += compute_output_ns * requests

    def record_failure(self, request_ns: int, reason: FailureReason) -> None:
        """One request answered with an error after ``request_ns`` nanoseconds."""
        with self._lock:
            self._fail_count += 1
            self._fail_ns += request_ns
            self._failures[reason] += 1

    def record_execution(
        self,
        batch_size: int,
        compute_input_ns: int,
        compute_infer_ns: int,
        compute_output_ns: int,
        now_ms: int | None = None,
    ) -> None:
        """One model execution of ``batch_size`` rows; ``now_ms`` defaults to the wall clock.

        As in Triton, ``last_inference`` moves with executions (never backwards), not with
        failed requests that never ran.
        """
        if not 1 <= batch_size <= self._largest_batch:
            raise ValueError(
                f"batch size {batch_size} is outside 1..{self._largest_batch} for model "
                f"'{self.name}' version {self.version}"
            )
        if now_ms is None:
            now_ms = time.time_ns() // 1_000_000
        with self._lock:
            self._execution_count += 1
            self._last_inference_ms = max(self._last_inference_ms, now_ms)
            batch = self._batches.get(batch_size)
            if batch is None:
                batch = self._batches[batch_size] = _BatchAccumulator()
            batch.count += 1
            batch.input_ns += compute_input_ns
            batch.infer_ns += compute_infer_ns
            batch.output_ns += compute_output_ns

    def record_response(
        self, index: int, compute_infer_ns: int, compute_output_ns: int, outcome: ResponseOutcome
    ) -> None:
        """One response of a streamed decoupled request, the ``index``-th of its request."""
        if not 0 <= index < MAX_RESPONSE_INDEXES:
            return
        with self._lock:
            response = self._responses.get(index)
            if response is None:
                response = self._responses[index] = _ResponseAccumulator()
            if outcome is ResponseOutcome.SUCCESS:
                response.infer[0] += 1
                response.infer[1] += compute_infer_ns
                response.output[0] += 1
                response.output[1] += compute_output_ns
            totals = response.outcomes[outcome]
            totals[0] += 1
            totals[1] += compute_infer_ns + compute_output_ns

    def request_queued(self) -> None:
        """A request entered the queue: it is pending until an instance picks it up."""
        with self._lock:
            self._pending += 1

    def request_dequeued(self) -> None:
        """A queued request left the queue (picked up to run, or dropped unrun)."""
        with self._lock:
            if self._pending == 0:
                raise RuntimeError("request_dequeued() without a matching request_queued()")
            self._pending -= 1

    def snapshot(self) -> StatisticsSnapshot:
        """Everything at one instant.

        Copying is O(distinct batch sizes), so a scrape holds the lock only briefly.
        """
        with self._lock:
            success_count = self._success_count
            return StatisticsSnapshot(
                name=self.name,
                version=self.version,
                max_batch_size=self.max_batch_size,
                last_inference_ms=self._last_inference_ms,
                inference_count=self._inference_count,
                execution_count=self._execution_count,
                success=Duration(success_count, self._request_ns),
                fail=Duration(self._fail_count, self._fail_ns),
                queue=Duration(success_count, self._queue_ns),
                compute_input=Duration(success_count, self._compute_input_ns),
                compute_infer=Duration(success_count, self._compute_infer_ns),
                compute_output=Duration(success_count, self._compute_output_ns),
                failures=MappingProxyType(dict(self._failures)),
                batch_stats=tuple(
                    self._batches[size].freeze(size) for size in sorted(self._batches)
                ),
                pending_requests=self._pending,
                response_stats=tuple(
                    self._responses[index].freeze(index) for index in sorted(self._responses)
                ),
            )
