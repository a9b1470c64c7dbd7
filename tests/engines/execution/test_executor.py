"""The batching executor driven directly, no server: a recording backend stands in for a
model, and gates (threading events) hold its runs so requests pile up deterministically.

Nothing here depends on timing. A request is queued by the time its task has taken its
first step (``run`` queues before its first await), which ``_start`` ensures and checks
against the statistics' pending count; an instance's entry into ``infer`` is awaited on
a condition. Every wait is bounded so that a broken executor fails a test, not hangs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest

from inferd.engines.backends import BackendInstance
from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.execution.executor import BatchingExecutor, Outputs
from inferd.engines.execution.packing import signature
from inferd.engines.scheduling.dynamic import BatchingPolicy, PendingRequest, QueuePolicy
from inferd.engines.statistics import FailureReason, ModelStatistics
from tests.support.fake_clock import FakeClock

WAIT_S = 30.0  # bound on every wait; a healthy executor needs a tiny fraction of it
LABEL = "recorded:1"
RAISE_BELOW = 0.0  # an input value below this makes the backend raise
SHORT_FROM = 1000.0  # an input value at or above this makes it return one row too few

T = TypeVar("T")


class RecordingInstance(BackendInstance):
    """Records what each run was given and computes OUTPUT0 = 2 * INPUT0 + 1 row by row.

    While ``gate`` is clear, a run blocks after recording itself, so later requests queue.
    ``cancel`` (the executor's abort) opens the gate and makes the blocked run fail.
    """

    def __init__(self, gated: bool = False, entered: threading.Condition | None = None) -> None:
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.calls: list[dict[str, np.ndarray]] = []
        self.output_names: list[tuple[str, ...]] = []
        self.threads: list[str] = []  # the thread each run ran on
        self.closed_during_run = False
        self.cancelled = threading.Event()
        self.closed = threading.Event()
        # Shared by instances whose runs a test counts together.
        self.entered = entered if entered is not None else threading.Condition()

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        device_outputs: frozenset[str] = frozenset(),
    ) -> dict[str, np.ndarray]:
        with self.entered:
            self.calls.append({name: np.array(array, copy=True) for name, array in inputs.items()})
            self.output_names.append(tuple(output_names))
            self.threads.append(threading.current_thread().name)
            self.entered.notify_all()
        if not self.gate.wait(WAIT_S):
            raise RuntimeError("the test never opened the gate")
        self.closed_during_run |= self.closed.is_set()
        if self.cancelled.is_set():
            raise RuntimeError("run aborted")
        data = inputs["INPUT0"]
        if (data < RAISE_BELOW).any():
            raise RuntimeError("negative input")
        outputs = {"OUTPUT0": data * 2 + 1, "ROWSUM": data.sum(axis=1)}
        if (data >= SHORT_FROM).any():
            outputs = {name: array[:-1] for name, array in outputs.items()}
        return {name: outputs[name] for name in output_names}

    def cancel(self) -> None:
        self.cancelled.set()
        self.gate.set()

    def close(self) -> None:
        self.closed.set()

    def wait_calls(self, count: int) -> None:
        """Block until ``count`` runs have started (bounded)."""
        with self.entered:
            if not self.entered.wait_for(lambda: len(self.calls) >= count, WAIT_S):
                raise AssertionError(f"expected {count} runs, saw {len(self.calls)}")

    def rows(self) -> list[int]:
        return [call["INPUT0"].shape[0] for call in self.calls]

    def markers(self) -> list[list[float]]:
        """Each run's first column: the marker of the request each row came from."""
        return [call["INPUT0"][:, 0].tolist() for call in self.calls]


@contextlib.contextmanager
def _executor(
    instances: Sequence[RecordingInstance],
    capacity: int = 64,
    clock: Callable[[], float] = time.monotonic,
    **policy: Any,
) -> Iterator[tuple[BatchingExecutor, ModelStatistics]]:
    policy.setdefault("max_batch_size", 8)
    policy.setdefault("dynamic", True)
    batching = BatchingPolicy(**policy)
    statistics = ModelStatistics("recorded", 1, batching.max_batch_size)
    executor = BatchingExecutor(LABEL, instances, batching, capacity, statistics, clock)
    try:
        yield executor, statistics
    finally:
        for instance in instances:
            instance.gate.set()
        executor.close()


def _inputs(marker: float, rows: int = 1, width: int = 4) -> dict[str, np.ndarray]:
    """Column 0 holds the marker on every row; the rest tell the rows apart."""
    data = np.full((rows, width), marker, np.float32)
    data[:, 1:] = np.arange(rows * (width - 1), dtype=np.float32).reshape(rows, width - 1) / 8
    return {"INPUT0": data}


def _expected(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    return inputs["INPUT0"] * 2 + 1


def _infer(
    executor: BatchingExecutor,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] = ("OUTPUT0",),
    **fields: Any,
) -> Coroutine[Any, Any, Outputs]:
    pending = PendingRequest(
        key=0,
        rows=inputs["INPUT0"].shape[0],
        signature=signature(inputs, batched=True),
        arrival=0.0,
        **fields,
    )
    return executor.run(inputs, outputs, pending)


async def _start(
    statistics: ModelStatistics | None, *requests: Coroutine[Any, Any, Outputs]
) -> list[asyncio.Task[Outputs]]:
    """Start requests as tasks and return once each has been queued.

    With ``statistics`` (only while every instance is busy, so nothing leaves the queue),
    check that they all wait there.
    """
    before = statistics.snapshot().pending_requests if statistics is not None else 0
    tasks = [asyncio.ensure_future(request) for request in requests]
    await asyncio.sleep(0)  # each task's first step runs now, and queues its request
    if statistics is not None:
        assert statistics.snapshot().pending_requests == before + len(tasks)
    return tasks


async def _entered(instance: RecordingInstance, count: int) -> None:
    await asyncio.to_thread(instance.wait_calls, count)


async def _within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, WAIT_S)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, WAIT_S))


def _engine_error(task: asyncio.Task[Outputs]) -> EngineError:
    error = task.exception()
    assert isinstance(error, EngineError), repr(error)
    return error


# Batching


def test_queued_requests_run_as_one_batch_and_each_gets_its_own_rows() -> None:
    instance = RecordingInstance(gated=True)
    requests = [_inputs(float(marker)) for marker in range(1, 7)]

    async def main() -> tuple[Outputs, list[Outputs]]:
        with _executor([instance], max_batch_size=8) as (executor, statistics):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(100.0)))
            await _entered(instance, 1)
            tasks = await _start(statistics, *(_infer(executor, r) for r in requests))
            assert len(instance.calls) == 1  # all six wait behind the gated run
            instance.gate.set()
            return await _within(blocker), await _within(asyncio.gather(*tasks))

    blocked, results = _run(main())
    assert instance.rows() == [1, 6]
    assert instance.markers()[1] == [1, 2, 3, 4, 5, 6]  # arrival order
    assert np.array_equal(blocked["OUTPUT0"], _expected(_inputs(100.0)))
    for request, result in zip(requests, results, strict=True):
        assert result.keys() == {"OUTPUT0"}
        assert result["OUTPUT0"].shape == (1, 4)
        assert np.array_equal(result["OUTPUT0"], _expected(request))


def test_requests_of_several_rows_get_back_exactly_their_rows() -> None:
    instance = RecordingInstance(gated=True)
    requests = [_inputs(1.0, rows=2), _inputs(2.0, rows=3), _inputs(3.0, rows=1)]

    async def main() -> list[Outputs]:
        with _executor([instance], max_batch_size=8) as (executor, statistics):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            tasks = await _start(
                statistics, *(_infer(executor, r, ("OUTPUT0", "ROWSUM")) for r in requests)
            )
            instance.gate.set()
            await _within(blocker)
            return await _within(asyncio.gather(*tasks))

    results = _run(main())
    assert instance.rows() == [1, 6]
    for request, result in zip(requests, results, strict=True):
        assert np.array_equal(result["OUTPUT0"], _expected(request))
        assert np.array_equal(result["ROWSUM"], request["INPUT0"].sum(axis=1))


def test_each_request_gets_only_the_outputs_it_asked_for() -> None:
    instance = RecordingInstance(gated=True)

    async def main() -> list[Outputs]:
        with _executor([instance]) as (executor, statistics):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            tasks = await _start(
                statistics,
                _infer(executor, _inputs(1.0), ("OUTPUT0",)),
                _infer(executor, _inputs(2.0), ("ROWSUM",)),
            )
            instance.gate.set()
            await _within(blocker)
            return await _within(asyncio.gather(*tasks))

    first, second = _run(main())
    assert instance.output_names[1] == ("OUTPUT0", "ROWSUM")  # the batch runs the union
    assert first.keys() == {"OUTPUT0"} and second.keys() == {"ROWSUM"}


def test_requests_with_different_shapes_never_share_a_batch() -> None:
    instance = RecordingInstance(gated=True)
    widths = [4, 4, 3, 3, 4, 2]
    requests = [_inputs(float(i), width=w) for i, w in enumerate(widths, start=1)]

    async def main() -> list[Outputs]:
        with _executor([instance], max_batch_size=8) as (executor, statistics):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            tasks = await _start(statistics, *(_infer(executor, r) for r in requests))
            instance.gate.set()
            await _within(blocker)
            return await _within(asyncio.gather(*tasks))

    results = _run(main())
    batches = instance.calls[1:]
    # Order is kept: a batch ends where the shape changes, it never skips ahead.
    assert [call["INPUT0"].shape for call in batches] == [(2, 4), (2, 3), (1, 4), (1, 2)]
    assert instance.markers()[1:] == [[1, 2], [3, 4], [5], [6]]
    for request, result in zip(requests, results, strict=True):
        assert np.array_equal(result["OUTPUT0"], _expected(request))


@pytest.mark.parametrize(
    ("rows", "batches"),
    [
        ([1] * 10, [4, 4, 2]),
        ([3, 2, 1, 3, 4, 1], [3, 3, 3, 4, 1]),
    ],
)
def test_max_batch_size_is_never_exceeded(rows: list[int], batches: list[int]) -> None:
    instance = RecordingInstance(gated=True)
    requests = [_inputs(float(i), rows=count) for i, count in enumerate(rows, start=1)]

    async def main() -> list[Outputs]:
        with _executor([instance], max_batch_size=4) as (executor, statistics):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            tasks = await _start(statistics, *(_infer(executor, r) for r in requests))
            instance.gate.set()
            await _within(blocker)
            return await _within(asyncio.gather(*tasks))

    results = _run(main())
    assert instance.rows()[1:] == batches
    assert max(instance.rows()) <= 4
    for request, result in zip(requests, results, strict=True):
        assert np.array_equal(result["OUTPUT0"], _expected(request))


def test_two_instances_run_batches_concurrently() -> None:
    first, second = RecordingInstance(gated=True), RecordingInstance(gated=True)

    async def main() -> list[Outputs]:
        # max_batch_size 1: each request is its own batch, so both instances get one.
        with _executor([first, second], max_batch_size=1) as (executor, statistics):
            # Free instances may take the requests at once: no pending-count check.
            tasks = await _start(
                None, _infer(executor, _inputs(1.0)), _infer(executor, _inputs(2.0))
            )
            # Both runs have started while neither may finish: they run side by side.
            await _entered(first, 1)
            await _entered(second, 1)
            assert statistics.snapshot().pending_requests == 0
            first.gate.set()
            second.gate.set()
            return await _within(asyncio.gather(*tasks))

    results = _run(main())
    assert sorted(first.markers() + second.markers()) == [[1.0], [2.0]]
    assert [r["OUTPUT0"][0, 0] for r in results] == [3.0, 5.0]


# Requests that never run


def test_a_cancelled_queued_request_never_reaches_the_backend() -> None:
    instance = RecordingInstance(gated=True)

    async def main() -> tuple[ModelStatistics, list[Outputs]]:
        with _executor([instance], max_batch_size=8) as (executor, statistics):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            kept, cancelled, also_kept = await _start(
                statistics,
                _infer(executor, _inputs(1.0)),
                _infer(executor, _inputs(2.0)),
                _infer(executor, _inputs(3.0)),
            )
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            await asyncio.sleep(0)  # the done callback that dequeues it has run
            snapshot = statistics.snapshot()
            assert snapshot.pending_requests == 2
            assert snapshot.failures[FailureReason.CANCELED] == 1
            instance.gate.set()
            await _within(blocker)
            return statistics, list(await _within(asyncio.gather(kept, also_kept)))

    statistics, results = _run(main())
    assert instance.markers() == [[9.0], [1.0, 3.0]]
    assert [r["OUTPUT0"][0, 0] for r in results] == [3.0, 7.0]
    snapshot = statistics.snapshot()
    assert snapshot.fail.count == 1
    assert dict(snapshot.failures) == {
        FailureReason.REJECTED: 0,
        FailureReason.CANCELED: 1,
        FailureReason.BACKEND: 0,
        FailureReason.OTHER: 0,
    }
    assert snapshot.success.count == 3 and snapshot.inference_count == 3
    assert snapshot.pending_requests == 0


def test_cancelling_twice_or_after_the_answer_is_harmless() -> None:
    instance = RecordingInstance()

    async def main() -> ModelStatistics:
        with _executor([instance]) as (executor, statistics):
            done = asyncio.ensure_future(_infer(executor, _inputs(1.0)))
            await _within(done)
            done.cancel()  # already answered: nothing to abort
            return statistics

    snapshot = _run(main()).snapshot()
    assert snapshot.success.count == 1 and snapshot.fail.count == 0


def test_a_request_whose_deadline_passed_is_answered_without_running() -> None:
    instance = RecordingInstance()

    async def main() -> ModelStatistics:
        with _executor([instance]) as (executor, statistics):
            with pytest.raises(EngineError) as raised:
                await _within(_infer(executor, _inputs(1.0), deadline=time.monotonic() - 1.0))
            assert raised.value.code is ErrorCode.DEADLINE_EXCEEDED
            assert "deadline" in raised.value.message
            # The instance still serves.
            result = await _within(_infer(executor, _inputs(2.0)))
            assert result["OUTPUT0"][0, 0] == 5.0
            return statistics

    snapshot = _run(main()).snapshot()
    assert instance.markers() == [[2.0]]
    assert snapshot.fail.count == 1 and snapshot.failures[FailureReason.REJECTED] == 1
    assert snapshot.execution_count == 1 and snapshot.inference_count == 1


def test_a_queue_timeout_rejects_without_running() -> None:
    instance = RecordingInstance(gated=True)
    policy = QueuePolicy(default_timeout_s=60.0, allow_timeout_override=True)
    clock = FakeClock()

    async def main() -> asyncio.Task[Outputs]:
        with _executor([instance], clock=clock, default_queue_policy=policy) as (
            executor,
            statistics,
        ):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            (expiring,) = await _start(statistics, _infer(executor, _inputs(1.0), timeout_s=0.01))
            # The request's timeout is due from now on, whoever looks at the queue first.
            clock.advance(1.0)
            instance.gate.set()
            await _within(blocker)
            await _within(asyncio.wait([expiring]))
            return expiring

    expiring = _run(main())
    error = _engine_error(expiring)
    assert error.code is ErrorCode.UNAVAILABLE
    assert error.message == "Request timeout expired"
    assert instance.markers() == [[9.0]]


def test_a_queue_timeout_is_answered_while_every_instance_is_busy() -> None:
    instance = RecordingInstance(gated=True)
    policy = QueuePolicy(default_timeout_s=60.0, allow_timeout_override=True)
    clock = FakeClock()

    async def main() -> None:
        with _executor([instance], clock=clock, default_queue_policy=policy) as (
            executor,
            statistics,
        ):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            (expiring,) = await _start(statistics, _infer(executor, _inputs(1.0), timeout_s=0.01))
            clock.advance(1.0)  # due now: the timer thread sees it when it next looks
            # The only instance stays blocked: the answer must come from the timer.
            await _within(asyncio.wait([expiring]))
            error = _engine_error(expiring)
            assert error.message == "Request timeout expired"
            assert not blocker.done()
            assert statistics.snapshot().pending_requests == 0
            instance.gate.set()
            await _within(blocker)

    _run(main())
    assert instance.markers() == [[9.0]]


def test_a_full_queue_refuses_at_once_with_unavailable() -> None:
    instance = RecordingInstance(gated=True)

    async def main() -> tuple[ModelStatistics, list[Outputs]]:
        with _executor([instance], capacity=2) as (executor, statistics):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            queued = await _start(
                statistics, _infer(executor, _inputs(1.0)), _infer(executor, _inputs(2.0))
            )
            # Refused while the gate is still closed: the answer does not wait for room.
            with pytest.raises(EngineError) as raised:
                await _within(_infer(executor, _inputs(3.0)))
            assert raised.value.code is ErrorCode.UNAVAILABLE
            assert raised.value.message.startswith("Exceeds maximum queue size")
            assert not blocker.done()
            instance.gate.set()
            await _within(blocker)
            return statistics, await _within(asyncio.gather(*queued))

    statistics, results = _run(main())
    assert instance.markers() == [[9.0], [1.0, 2.0]]
    assert len(results) == 2
    snapshot = statistics.snapshot()
    assert snapshot.failures[FailureReason.REJECTED] == 1 and snapshot.success.count == 3


def test_max_queue_size_of_the_policy_refuses_at_once() -> None:
    instance = RecordingInstance(gated=True)
    policy = QueuePolicy(max_queue_size=1)

    async def main() -> None:
        with _executor([instance], default_queue_policy=policy) as (executor, statistics):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            (queued,) = await _start(statistics, _infer(executor, _inputs(1.0)))
            with pytest.raises(EngineError, match=r"^Exceeds maximum queue size") as raised:
                await _within(_infer(executor, _inputs(2.0)))
            assert raised.value.code is ErrorCode.UNAVAILABLE
            instance.gate.set()
            await _within(asyncio.gather(blocker, queued))

    _run(main())
    assert instance.markers() == [[9.0], [1.0]]


# Failures


def test_a_backend_exception_fails_only_the_request_that_caused_it() -> None:
    instance = RecordingInstance(gated=True)

    async def main() -> tuple[list[asyncio.Task[Outputs]], ModelStatistics]:
        with _executor([instance], max_batch_size=8) as (executor, statistics):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            tasks = await _start(
                statistics,
                _infer(executor, _inputs(-1.0)),  # makes its batch raise
                _infer(executor, _inputs(1.0)),  # same shape: same batch
                _infer(executor, _inputs(2.0, width=3)),  # next batch
            )
            instance.gate.set()
            await _within(blocker)
            await _within(asyncio.wait(tasks))
            # The same (only) instance keeps serving.
            after = await _within(_infer(executor, _inputs(3.0)))
            assert after["OUTPUT0"][0, 0] == 7.0
            return tasks, statistics

    (bad, batch_mate, next_batch), statistics = _run(main())
    error = _engine_error(bad)
    assert error.code is ErrorCode.INTERNAL
    assert f"model '{LABEL}' failed" in error.message
    assert "negative input" in error.message
    # The failed batch is rerun one request at a time: the batch-mate succeeds.
    assert batch_mate.result()["OUTPUT0"][0, 0] == 3.0
    assert next_batch.result()["OUTPUT0"][0, 0] == 5.0
    assert instance.markers() == [[9.0], [-1.0, 1.0], [-1.0], [1.0], [2.0], [3.0]]
    snapshot = statistics.snapshot()
    assert snapshot.failures[FailureReason.BACKEND] == 1
    assert snapshot.success.count == 4
    assert snapshot.execution_count == 4  # failed runs are not counted as executions


def test_a_model_returning_the_wrong_row_count_fails_the_batch() -> None:
    instance = RecordingInstance(gated=True)

    async def main() -> list[asyncio.Task[Outputs]]:
        with _executor([instance], max_batch_size=8) as (executor, statistics):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            tasks = await _start(
                statistics,
                _infer(executor, _inputs(SHORT_FROM)),
                _infer(executor, _inputs(1.0)),
            )
            instance.gate.set()
            await _within(blocker)
            await _within(asyncio.wait(tasks))
            return tasks

    for task in _run(main()):
        error = _engine_error(task)
        assert error.code is ErrorCode.INTERNAL
        assert "must return 2 rows" in error.message


# Ordering


def test_preserve_ordering_answers_in_arrival_order() -> None:
    entered = threading.Condition()
    first = RecordingInstance(gated=True, entered=entered)
    second = RecordingInstance(gated=True, entered=entered)
    completed: list[str] = []

    async def main() -> list[Outputs]:
        with _executor([first, second], max_batch_size=1, preserve_ordering=True) as (
            executor,
            _,
        ):
            early = asyncio.ensure_future(_infer(executor, _inputs(1.0)))
            early.add_done_callback(lambda _: completed.append("early"))
            await _entered_any([first, second], 1)
            holder = first if first.calls else second
            other = second if holder is first else first
            (late,) = await _start(None, _infer(executor, _inputs(2.0)))
            late.add_done_callback(lambda _: completed.append("late"))
            await _entered(other, 1)

            # The later request finishes first...
            other.gate.set()
            (probe,) = await _start(None, _infer(executor, _inputs(3.0)))
            probe.add_done_callback(lambda _: completed.append("probe"))
            # ...and `other` took the probe only after posting the late answer, which the
            # loop has handled by the time this wait returns (its callbacks run in order).
            await _entered(other, 2)
            await asyncio.sleep(0)
            assert not late.done() and not probe.done()
            assert completed == []

            holder.gate.set()
            return list(await _within(asyncio.gather(early, late, probe)))

    results = _run(main())
    assert completed == ["early", "late", "probe"]
    assert [r["OUTPUT0"][0, 0] for r in results] == [3.0, 5.0, 7.0]


def test_preserve_ordering_survives_a_refused_request() -> None:
    # A request refused at once (full queue) never gets an answer slot; the requests
    # after it must still be answered.
    instance = RecordingInstance(gated=True)

    async def main() -> list[Outputs]:
        with _executor([instance], capacity=1, max_batch_size=1, preserve_ordering=True) as (
            executor,
            statistics,
        ):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            (queued,) = await _start(statistics, _infer(executor, _inputs(1.0)))
            with pytest.raises(EngineError, match=r"^Exceeds maximum queue size"):
                await _within(_infer(executor, _inputs(2.0)))
            instance.gate.set()
            await _within(asyncio.gather(blocker, queued))
            return [await _within(_infer(executor, _inputs(3.0)))]

    (after,) = _run(main())
    assert after["OUTPUT0"][0, 0] == 7.0


def test_preserve_ordering_forgets_a_request_cancelled_while_running() -> None:
    instance = RecordingInstance(gated=True)

    async def main() -> Outputs:
        with _executor([instance], max_batch_size=1, preserve_ordering=True) as (
            executor,
            _,
        ):
            running = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            instance.gate.set()
            result = await _within(_infer(executor, _inputs(1.0)))
            order = executor._order
            assert order is not None
            # Every answer slot was released; none is held waiting for its turn.
            assert order._ready == {}
            return result

    assert _run(main())["OUTPUT0"][0, 0] == 3.0


async def _entered_any(instances: Sequence[RecordingInstance], count: int) -> None:
    """Wait until instances sharing one ``entered`` condition have started ``count`` runs."""
    condition = instances[0].entered
    assert all(instance.entered is condition for instance in instances)

    def wait() -> None:
        with condition:
            if not condition.wait_for(
                lambda: sum(len(instance.calls) for instance in instances) >= count, WAIT_S
            ):
                raise AssertionError(f"expected {count} runs in all")

    await asyncio.to_thread(wait)


# Shutdown


def test_close_answers_queued_work_unavailable_and_returns() -> None:
    instance = RecordingInstance(gated=True)
    statistics = ModelStatistics("recorded", 1, 8)
    executor = BatchingExecutor(
        LABEL, [instance], BatchingPolicy(max_batch_size=8, dynamic=True), 64, statistics
    )

    async def main() -> tuple[asyncio.Task[Outputs], list[asyncio.Task[Outputs]]]:
        try:
            running = asyncio.ensure_future(_infer(executor, _inputs(9.0)))
            await _entered(instance, 1)
            queued = await _start(
                statistics, _infer(executor, _inputs(1.0)), _infer(executor, _inputs(2.0))
            )
            # The gate stays closed: close() must abort the run, not wait for it.
            await _within(asyncio.to_thread(executor.close))
            await _within(asyncio.wait([running, *queued]))
            with pytest.raises(EngineError, match="unloading") as raised:
                await _infer(executor, _inputs(3.0))
            assert raised.value.code is ErrorCode.UNAVAILABLE
            return running, queued
        finally:
            instance.gate.set()
            executor.close()  # idempotent

    running, queued = _run(main())
    for task in queued:
        error = _engine_error(task)
        assert error.code is ErrorCode.UNAVAILABLE
        assert error.message == "server stopping"
    assert _engine_error(running).code is ErrorCode.INTERNAL  # aborted by cancel()
    assert instance.cancelled.is_set() and instance.closed.is_set()
    assert instance.markers() == [[9.0]]
    assert statistics.snapshot().pending_requests == 0


def test_close_with_nothing_queued_releases_every_instance() -> None:
    instances = [RecordingInstance(), RecordingInstance()]
    statistics = ModelStatistics("recorded", 1, 4)
    executor = BatchingExecutor(
        LABEL, instances, BatchingPolicy(max_batch_size=4, dynamic=True), 8, statistics
    )
    executor.close()
    executor.close()
    assert all(instance.closed.is_set() for instance in instances)


# Statistics


def test_statistics_count_rows_requests_and_batches() -> None:
    instance = RecordingInstance(gated=True)

    async def main() -> ModelStatistics:
        with _executor([instance], max_batch_size=8) as (executor, statistics):
            blocker = asyncio.ensure_future(_infer(executor, _inputs(9.0, rows=2)))
            await _entered(instance, 1)
            tasks = await _start(
                statistics,
                *(_infer(executor, _inputs(float(i), rows=i)) for i in (1, 2, 3)),
            )
            assert statistics.snapshot().pending_requests == 3
            instance.gate.set()
            await _within(asyncio.gather(blocker, *tasks))
            return statistics

    snapshot = _run(main()).snapshot()
    assert instance.rows() == [2, 6]
    assert snapshot.inference_count == 2 + 6  # rows, not requests
    assert snapshot.execution_count == 2  # batches
    assert snapshot.success.count == 4  # requests
    assert snapshot.queue.count == snapshot.compute_infer.count == 4
    assert snapshot.fail.count == 0
    assert [(b.batch_size, b.compute_infer.count) for b in snapshot.batch_stats] == [(2, 1), (6, 1)]
    assert snapshot.pending_requests == 0
    assert snapshot.last_inference_ms > 0


# --- submit: a caller on its own thread (the threads front) -------------------------------


def _submit(executor: BatchingExecutor, inputs: Mapping[str, np.ndarray]) -> Any:
    pending = PendingRequest(
        key=0, rows=inputs["INPUT0"].shape[0], signature=signature(inputs, True), arrival=0.0
    )
    return executor.submit(inputs, ("OUTPUT0",), pending)


def _on_thread(name: str, function: Callable[[], T]) -> tuple[threading.Thread, list[T]]:
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(function()), name=name)
    thread.start()
    return thread, result


def test_submit_runs_the_batch_on_the_submitting_thread_when_an_instance_is_free() -> None:
    instance = RecordingInstance()
    with _executor([instance]) as (executor, statistics):
        thread, futures = _on_thread("caller", lambda: _submit(executor, _inputs(1.0)))
        thread.join(WAIT_S)
        assert futures[0].result(WAIT_S)["OUTPUT0"][0, 0] == 3.0
    assert instance.threads == ["caller"]
    assert statistics.snapshot().success.count == 1


def test_a_submission_queued_behind_a_callers_run_goes_to_the_instance_thread() -> None:
    instance = RecordingInstance(gated=True)
    with _executor([instance]) as (executor, statistics):
        first, first_future = _on_thread("first", lambda: _submit(executor, _inputs(1.0)))
        instance.wait_calls(1)  # "first" runs its batch itself and waits at the gate
        second = _submit(executor, _inputs(2.0))  # no free instance: queued
        assert statistics.snapshot().pending_requests == 1
        instance.gate.set()
        first.join(WAIT_S)
        assert first_future[0].result(WAIT_S)["OUTPUT0"][0, 0] == 3.0
        assert second.result(WAIT_S)["OUTPUT0"][0, 0] == 5.0
    assert instance.threads == ["first", f"inferd-{LABEL}-0"]


def test_cancelling_a_queued_submission_removes_it() -> None:
    instance = RecordingInstance(gated=True)
    with _executor([instance]) as (executor, statistics):
        first, _ = _on_thread("first", lambda: _submit(executor, _inputs(1.0)))
        instance.wait_calls(1)
        queued = _submit(executor, _inputs(2.0))
        assert queued.cancel()
        snapshot = statistics.snapshot()
        assert snapshot.pending_requests == 0
        assert snapshot.failures[FailureReason.CANCELED] == 1
        instance.gate.set()
        first.join(WAIT_S)
    assert instance.markers() == [[1.0]]


def test_closing_waits_for_a_callers_run_before_releasing_the_instance() -> None:
    instance = RecordingInstance(gated=True)
    with _executor([instance]) as (executor, _):
        running, futures = _on_thread("caller", lambda: _submit(executor, _inputs(1.0)))
        instance.wait_calls(1)
        executor.close()  # aborts the run (the gate opens), then releases the instance
        running.join(WAIT_S)
        with pytest.raises(EngineError):
            futures[0].result(WAIT_S)
    assert instance.closed.is_set() and not instance.closed_during_run
