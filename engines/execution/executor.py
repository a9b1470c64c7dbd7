"""Execution instances fed by the dynamic-batching scheduler, continuously.

Each instance is one thread with one backend instance. The moment an instance is free it
asks the scheduler (pure logic, under one lock) for the best batch available now, runs
it, splits the outputs back to the requests, and asks again; it sleeps on a condition
only when the scheduler says to wait (for a request, or for a batch to fill within its
delay budget). The event loop only adds requests, removes cancelled ones and receives
results through ``loop.call_soon_threadsafe``; model code never runs on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inferd.engines.backends import BackendInstance, BackendRequest, RequestInstance
from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.execution.packing import scatter
from inferd.engines.execution.streams import ResponseStream, StreamedResponse
from inferd.engines.options import DEFAULT_OPTIONS, RequestOptions
from inferd.engines.scheduling.dynamic import (
    BatchingPolicy,
    PendingRequest,
    QueueFull,
    Rejection,
    RejectReason,
    Scheduler,
)
from inferd.engines.statistics import FailureReason, ModelStatistics, ResponseOutcome
from inferd.engines.types import BatchMember, BatchObserver, BatchRecord

logger = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]

# The GIL switch interval (sys.setswitchinterval) `inferd serve` picks when a model has
# GPU instances: how long a thread holding the GIL runs while another waits. At Python's
# 5 ms, an instance thread whose GPU batch has finished waits behind the busy event loop
# before it can answer and launch the next; at 0.5 ms BERT-base went from 77% to 96% of
# its ceiling on an H200. For CPU models the short interval costs: about 9% of small-
# request throughput on the 2-core machine, so they keep Python's default
# (docs/benchmarks.md has both measurements).
GPU_GIL_SWITCH_INTERVAL_S = 0.0005


# A request's answer: an asyncio future resolved on its event loop, or, for a caller on a
# thread of its own (``submit``), a concurrent future resolved by the instance thread.
AnswerFuture = asyncio.Future[Outputs] | concurrent.futures.Future[Outputs]


@dataclass(slots=True)
class Job:
    """One request's work, from the moment it is queued until it is answered."""

    pending: PendingRequest
    inputs: Mapping[str, np.ndarray]
    output_names: tuple[str, ...]
    loop: asyncio.AbstractEventLoop | None  # None: answered on the thread that has it
    future: AnswerFuture
    sequence: int  # arrival order, for preserve_ordering
    queued_ns: int  # time.perf_counter_ns() when queued
    trace: object | None = None  # the front end's handle, for the BatchObserver
    # Request-level instances (Python models) see these; tensor instances do not.
    request_id: str = ""
    options: RequestOptions = DEFAULT_OPTIONS
    # Set for a streamed request: its responses go here, and the future only says when
    # it ended (or why it never ran).
    stream: ResponseStream | None = None
    # Outputs it writes into a client's CUDA shared memory (takes_device_tensors only).
    device_outputs: frozenset[str] = frozenset()


class ResponseOrder:
    """``preserve_ordering``: answers leave in arrival order. Runs on the event loop only."""

    def __init__(self) -> None:
        self._next = 0
        self._ready: dict[int, tuple[asyncio.Future[Outputs], Outputs | BaseException | None]] = {}

    def complete(
        self, sequence: int, future: asyncio.Future[Outputs], result: Outputs | BaseException | None
    ) -> None:
        """Record an answer (None: the request was cancelled) and release what is due."""
        if sequence < self._next:
            # Already released: a request cancelled while it ran gets its model answer
            # after its slot went by; keeping it would hold it here forever.
            return
        self._ready[sequence] = (future, result)
        while self._next in self._ready:
            ready_future, ready_result = self._ready.pop(self._next)
            self._next += 1
            if ready_result is not None:
                _resolve(ready_future, ready_result)


def _resolve(future: AnswerFuture, result: Outputs | BaseException) -> None:
    if future.done():  # the caller went away (cancelled) while the model ran
        return
    # A concurrent future may be cancelled by another thread since the check.
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class BatchingExecutor:
    """The execution instances of one model version and the queue in front of them.

    ``label`` is ``model:version``; ``observer`` (tracing) hears of each batch that
    carried a traced request; ``devices`` names each instance's device ("cpu").
    """

    def __init__(
        self,
        label: str,
        instances: Sequence[BackendInstance | RequestInstance],
        policy: BatchingPolicy,
        queue_capacity: int,
        statistics: ModelStatistics,
        clock: Callable[[], float] = time.monotonic,
        observer: BatchObserver | None = None,
        devices: Sequence[str] | None = None,
    ) -> None:
        self._label = label
        self._observer = observer
        self._devices = list(devices) if devices is not None else ["cpu"] * len(instances)
        self._instances = list(instances)
        # Inputs in a client's GPU memory may stay there (see BackendInstance).
        self.takes_device_tensors = bool(instances) and all(
            isinstance(instance, BackendInstance) and instance.takes_device_tensors
            for instance in instances
        )
        self._scheduler = Scheduler(policy, queue_capacity)
        # Which instances run a batch now, on their own thread or on a submitting one's.
        self._busy = [False] * len(self._instances)
        # CPU tensor instances may run a batch on the thread that submits it (``submit``):
        # no wake-up of an instance thread and no hand-back, two thread switches fewer.
        self._runs_on_callers = [
            isinstance(instance, BackendInstance) and device == "cpu"
            for instance, device in zip(self._instances, self._devices, strict=True)
        ]
        self._statistics = statistics
        self._clock = clock
        self._jobs: dict[int, Job] = {}
        self._keys = itertools.count()
        # Answer slots for preserve_ordering: taken only once a request is queued, so a
        # request refused at once leaves no gap that would hold every later answer.
        self._sequences = itertools.count()
        self._order = ResponseOrder() if policy.preserve_ordering else None
        lock = threading.Lock()
        self._changed = threading.Condition(lock)  # instances: work may be ready
        self._expiry_changed = threading.Condition(lock)  # the timekeeper: re-read expiries
        self._closed = False
        self._timer_due: float | None = None  # when the timer thread next looks
        self._threads = [
            threading.Thread(
                target=self._run_instance,
                args=(index, instance),
                name=f"inferd-{label}-{index}",
                daemon=True,
            )
            for index, instance in enumerate(self._instances)
        ]
        # Free instances expire requests when they ask for work; while every instance is
        # busy, this thread answers queue timeouts and deadlines when they fall due.
        self._threads.append(
            threading.Thread(target=self._keep_time, name=f"inferd-{label}-timer", daemon=True)
        )
        for thread in self._threads:
            thread.start()

    async def run(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        pending: PendingRequest,
        trace: object | None = None,
        *,
        request_id: str = "",
        options: RequestOptions = DEFAULT_OPTIONS,
        stream: ResponseStream | None = None,
        device_outputs: frozenset[str] = frozenset(),
    ) -> Outputs:
        """Queue one request and wait for its outputs; cancelling the wait removes it.

        ``trace`` is handed to the observer with the batch the request rides in. With
        ``stream``, responses go there and this returns (empty) once the request ended.
        ``device_outputs`` may come back as device tensors (see BackendInstance.infer).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self._enqueue(
            Job(pending, inputs, tuple(output_names), loop, future, 0, 0, trace, request_id,
                options, stream, device_outputs)
        )  # fmt: skip
        return await future

    @property
    def answers_threads(self) -> bool:
        """Whether ``submit`` serves this executor: not where answers must leave in
        arrival order (kept on the event loop) or a subclass schedules otherwise."""
        return self._order is None and type(self)._queue is BatchingExecutor._queue

    def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        pending: PendingRequest,
        *,
        request_id: str = "",
        options: RequestOptions = DEFAULT_OPTIONS,
    ) -> concurrent.futures.Future[Outputs]:
        """``run`` for a caller on its own thread (a synchronous front door): the
        future resolves on the instance thread, with no event loop between; cancelling
        it, from any thread, removes a request still queued. Only where
        ``answers_threads``."""
        assert self.answers_threads, f"model '{self._label}' answers on its event loop"
        future: concurrent.futures.Future[Outputs] = concurrent.futures.Future()
        claimed = self._enqueue(
            Job(pending, inputs, tuple(output_names), None, future, 0, 0, None, request_id,
                options),
            caller_may_run=True,
        )  # fmt: skip
        if claimed is not None:
            index, jobs = claimed
            instance = self._instances[index]
            assert isinstance(instance, BackendInstance)
            try:
                self._execute(index, instance, jobs)
                self._batch_ended(jobs)
            finally:
                with self._changed:
                    self._busy[index] = False
                    if self._closed:  # its instance thread waits to release the instance
                        self._changed.notify_all()
                    elif self._jobs:  # queued meanwhile: its instance thread slept on it
                        self._changed.notify()
        return future

    def _enqueue(self, job: Job, caller_may_run: bool = False) -> tuple[int, list[Job]] | None:
        """Queue ``job`` (or raise why not); from now on its future will be resolved.
        With ``caller_may_run``, a batch ready now on a free CPU instance is claimed for
        the caller to run: (instance index, jobs)."""
        pending = job.pending
        claimed = None
        with self._changed:
            if self._closed:
                raise EngineError(ErrorCode.UNAVAILABLE, f"model '{self._label}' is unloading")
            pending.key = next(self._keys)
            pending.arrival = self._clock()
            try:
                self._queue(pending, job.options)
            except QueueFull:
                self._statistics.record_failure(0, FailureReason.REJECTED)
                raise
            self._statistics.request_queued()
            job.sequence = next(self._sequences)
            job.queued_ns = time.perf_counter_ns()
            self._jobs[pending.key] = job
            if caller_may_run:
                claimed = self._claim_for_caller()
            if claimed is None:
                self._wake_instances()
            # Wake the timer only when this request expires before it was going to look:
            # most requests carry no deadline, and a wake-up per request costs throughput.
            due = self._next_expiry()
            if due is not None and (self._timer_due is None or due < self._timer_due):
                self._expiry_changed.notify()
        job.future.add_done_callback(lambda done: self._on_done(job, done))
        return claimed

    def _claim_for_caller(self) -> tuple[int, list[Job]] | None:
        """Under the lock: a free CPU instance and the batch the scheduler hands it now,
        or None (every such instance is busy, or the batch should wait to fill: an
        instance thread then times it)."""
        for index, runs_here in enumerate(self._runs_on_callers):
            if runs_here and not self._busy[index]:
                break
        else:
            return None
        schedule = self._scheduler.schedule(self._clock())
        self._answer_rejections(schedule.rejected)
        if not schedule.batch:
            return None
        for _ in schedule.batch:
            self._statistics.request_dequeued()
        self._busy[index] = True
        return index, [self._jobs.pop(request.key) for request in schedule.batch]

    # Hooks where a scheduler other than the dynamic batcher plugs in (sequence_executor).

    def _queue(self, pending: PendingRequest, options: RequestOptions) -> None:
        """Add a request to the scheduler, under the lock; raise to refuse it."""
        self._scheduler.add(pending)

    def _unqueue(self, key: int) -> bool:
        """Take a queued request out, under the lock; False when it is not queued."""
        return self._scheduler.remove(key)

    def _next_expiry(self) -> float | None:
        return self._scheduler.next_expiry()

    def _wake_instances(self) -> None:
        self._changed.notify()

    def _batch_ended(self, jobs: list[Job]) -> None:
        """An instance has finished running ``jobs`` (execute returned)."""

    # Outputs the model is always asked for, beyond those the requests name (implicit
    # sequence state); ``_take_outputs`` sees them before the requests' answers do.
    _extra_outputs: tuple[str, ...] = ()

    def _take_outputs(self, job: Job, outputs: Outputs) -> Outputs:
        """A request's outputs (or one streamed response's) before they are answered;
        called on the thread that produced them."""
        return outputs

    def _on_done(self, job: Job, future: AnswerFuture) -> None:
        if not future.cancelled():
            return
        with self._changed:
            queued = self._unqueue(job.pending.key)
            self._jobs.pop(job.pending.key, None)
            if queued:
                self._statistics.request_dequeued()
        if queued:  # a running request is counted when its batch ends
            elapsed = time.perf_counter_ns() - job.queued_ns
            self._statistics.record_failure(elapsed, FailureReason.CANCELED)
        if self._order is not None:
            assert isinstance(future, asyncio.Future)  # submit() refuses ordered models
            self._order.complete(job.sequence, future, None)

    def _answer(self, job: Job, result: Outputs | BaseException) -> None:
        self._answer_all([(job, result)])

    def _answer_all(self, answers: list[tuple[Job, Outputs | BaseException]]) -> None:
        """Hand results over: a thread's future here, loop futures in one callback per
        event loop (one wake-up of the loop per batch, not per request)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Outputs | BaseException]]] = {}
        for job, result in answers:
            if job.loop is None:  # a thread waits on a concurrent future: resolve it here
                _resolve(job.future, result)
            else:
                by_loop.setdefault(job.loop, []).append((job, result))
        for loop, delivered in by_loop.items():
            # RuntimeError: the loop closed while the model ran, so nobody waits.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, delivered)

    def _deliver(self, answers: list[tuple[Job, Outputs | BaseException]]) -> None:
        """On the event loop: resolve the futures (in arrival order under
        preserve_ordering)."""
        for job, result in answers:
            if self._order is not None:
                assert isinstance(job.future, asyncio.Future)
                self._order.complete(job.sequence, job.future, result)
            else:
                _resolve(job.future, result)

    def _next_batch(self, index: int) -> list[Job] | None:
        """Block until the scheduler hands this instance a batch; None when closing."""
        with self._changed:
            while not self._closed:
                if self._busy[index]:  # a submitting thread runs a batch on it
                    self._changed.wait()
                    continue
                schedule = self._scheduler.schedule(self._clock())
                self._answer_rejections(schedule.rejected)
                if schedule.batch:
                    for _ in schedule.batch:
                        self._statistics.request_dequeued()
                    if schedule.wake_at is not None and schedule.wake_at <= self._clock():
                        self._changed.notify()  # more is ready: wake another free instance
                    self._busy[index] = True
                    return [self._jobs.pop(request.key) for request in schedule.batch]
                timeout = None if schedule.wake_at is None else schedule.wake_at - self._clock()
                if timeout is None or timeout > 0:
                    self._changed.wait(timeout)
            while self._busy[index]:  # closing: a submitting thread still runs on it
                self._changed.wait()
            return None

    def _keep_time(self) -> None:
        with self._changed:
            while not self._closed:
                rejected, self._timer_due = self._scheduler.expire(self._clock())
                self._answer_rejections(rejected)
                timeout = None if self._timer_due is None else self._timer_due - self._clock()
                if timeout is None or timeout > 0:
                    self._expiry_changed.wait(timeout)

    def _answer_rejections(self, rejected: tuple[Rejection, ...]) -> None:
        for rejection in rejected:
            self._statistics.request_dequeued()
            self._reject(self._jobs.pop(rejection.request.key), rejection.reason)

    def _reject(self, job: Job, reason: RejectReason) -> None:
        elapsed = time.perf_counter_ns() - job.queued_ns
        self._statistics.record_failure(elapsed, FailureReason.REJECTED)
        self._answer(job, reason.error())

    def _run_instance(self, index: int, instance: BackendInstance | RequestInstance) -> None:
        while (jobs := self._next_batch(index)) is not None:
            try:
                if isinstance(instance, RequestInstance):
                    self._execute_requests(index, instance, jobs)
                else:
                    self._execute(index, instance, jobs)
                self._batch_ended(jobs)
            finally:
                with self._changed:
                    self._busy[index] = False
        instance.close()

    def _execute_requests(self, index: int, instance: RequestInstance, jobs: list[Job]) -> None:
        """A batch as separate requests; each answers through its own sender, possibly
        after ``execute`` returned (decoupled models)."""
        started_ns = time.perf_counter_ns()
        senders = [_JobSender(self, job, started_ns) for job in jobs]
        requests = [
            BackendRequest(
                job.request_id,
                job.inputs,
                job.output_names + self._extra_outputs,
                job.options,
                sender,
            )
            for job, sender in zip(jobs, senders, strict=True)
        ]
        error: str | None = None
        try:
            instance.execute(requests)
        except Exception as exc:
            if not isinstance(exc, EngineError):
                logger.exception("model '%s' failed on a batch of %d", self._label, len(jobs))
                exc = EngineError(ErrorCode.INTERNAL, f"model '{self._label}' failed: {exc}")
            error = exc.message
            for sender in senders:
                sender.fail(exc)
        done_ns = time.perf_counter_ns()
        self._observe(index, jobs, (started_ns, started_ns, done_ns, done_ns), error)
        if error is None:
            rows = sum(job.pending.rows for job in jobs)
            self._statistics.record_execution(rows, 0, done_ns - started_ns, 0)

    def _execute(self, index: int, instance: BackendInstance, jobs: list[Job]) -> None:
        started_ns = time.perf_counter_ns()
        infer_ns = output_ns = started_ns
        rows = [job.pending.rows for job in jobs]
        try:
            inputs = instance.gather([job.inputs for job in jobs])
            names = sorted(
                {name for job in jobs for name in job.output_names + self._extra_outputs}
            )
            # Outputs stay on the device only when every request of the batch writes them
            # into CUDA shared memory: nobody then needs them copied back to the host.
            keep = frozenset.intersection(*(job.device_outputs for job in jobs))
            infer_ns = time.perf_counter_ns()
            try:
                outputs = (
                    instance.infer(inputs, names, keep) if keep else instance.infer(inputs, names)
                )
            except Exception as exc:
                if len(jobs) > 1 and not self._closed:
                    # One request's data can fail a whole batch (a string that does not
                    # parse, say): run them one by one so only that request fails.
                    logger.warning(
                        "model '%s' failed on a batch of %d requests (%s); running them one "
                        "by one", self._label, len(jobs), exc,
                    )  # fmt: skip
                    for job in jobs:
                        self._execute(index, instance, [job])
                    return
                raise
            output_ns = time.perf_counter_ns()
            per_request = scatter(outputs, rows)
        except Exception as exc:
            if not isinstance(exc, EngineError):
                logger.exception("model '%s' failed on a batch of %d", self._label, sum(rows))
                exc = EngineError(ErrorCode.INTERNAL, f"model '{self._label}' failed: {exc}")
            now_ns = time.perf_counter_ns()
            # Observed before answering: a traced request's span ends with its answer.
            self._observe(
                index, jobs, (started_ns, infer_ns, max(output_ns, infer_ns), now_ns), exc.message
            )
            for job in jobs:
                self._statistics.record_failure(now_ns - job.queued_ns, FailureReason.BACKEND)
            self._answer_all([(job, exc) for job in jobs])
            return
        done_ns = time.perf_counter_ns()
        # Observed before answering: a traced request's span ends with its answer.
        self._observe(index, jobs, (started_ns, infer_ns, output_ns, done_ns), None)
        self._statistics.record_execution(
            sum(rows), infer_ns - started_ns, output_ns - infer_ns, done_ns - output_ns
        )
        queued_ns = sum(job.queued_ns for job in jobs)
        self._statistics.record_batch_success(
            requests=len(jobs),
            rows=sum(rows),
            queue_ns=started_ns * len(jobs) - queued_ns,
            request_ns=done_ns * len(jobs) - queued_ns,
            compute_input_ns=infer_ns - started_ns,
            compute_infer_ns=output_ns - infer_ns,
            compute_output_ns=done_ns - output_ns,
        )
        answers: list[tuple[Job, Outputs | BaseException]] = []
        for job, outputs_of_job in zip(jobs, per_request, strict=True):
            outputs_of_job = self._take_outputs(job, outputs_of_job)
            answers.append((job, {name: outputs_of_job[name] for name in job.output_names}))
        self._answer_all(answers)

    def _observe(
        self,
        index: int,
        jobs: list[Job],
        times: tuple[int, int, int, int],
        error: str | None,
    ) -> None:
        """Tell the observer (tracing) of a batch with traced requests; else nothing."""
        if self._observer is None:
            return
        members = tuple(
            BatchMember(job.trace, job.queued_ns) for job in jobs if job.trace is not None
        )
        if not members:
            return
        name, _, version = self._label.rpartition(":")
        start_ns, infer_ns, output_ns, done_ns = times
        record = BatchRecord(
            model=name,
            version=int(version) if version.isdigit() else 0,
            instance=index,
            device=self._devices[index],
            rows=sum(job.pending.rows for job in jobs),
            requests=len(jobs),
            start_ns=start_ns,
            infer_start_ns=infer_ns,
            infer_end_ns=output_ns,
            done_ns=done_ns,
            members=members,
            error=error,
        )
        try:
            self._observer.on_batch(record)
        except Exception:  # observing must never fail the model
            logger.exception("batch observer failed for model '%s'", self._label)

    def _request_ended(self, job: Job, started_ns: int, error: EngineError | None) -> None:
        """Statistics and the caller's future once a request-level request has ended."""
        now_ns = time.perf_counter_ns()
        if error is not None:
            self._statistics.record_failure(now_ns - job.queued_ns, FailureReason.BACKEND)
        else:
            self._statistics.record_success(
                rows=job.pending.rows,
                queue_ns=started_ns - job.queued_ns,
                compute_input_ns=0,
                compute_infer_ns=now_ns - started_ns,
                compute_output_ns=0,
                request_ns=now_ns - job.queued_ns,
            )

    def close(self) -> None:
        """Stop: answer queued work UNAVAILABLE, abort runs in progress, release instances.

        Called once the server has stopped taking RPCs and the grace period for in-flight
        ones is over, so whatever is still queued or running has nobody waiting for it.
        """
        with self._changed:
            if self._closed:
                return
            self._closed = True
            now_ns = time.perf_counter_ns()
            for job in self._jobs.values():
                if self._unqueue(job.pending.key):
                    self._statistics.request_dequeued()
                self._statistics.record_failure(now_ns - job.queued_ns, FailureReason.OTHER)
                self._answer(job, EngineError(ErrorCode.UNAVAILABLE, "server stopping"))
            self._jobs.clear()
            self._changed.notify_all()
            self._expiry_changed.notify_all()
        for instance in self._instances:
            instance.cancel()
        for thread in self._threads:
            thread.join()


class _JobSender:
    """The engine's side of a ``ResponseSender``: one request's responses, from any
    thread, into its stream (streamed requests) or its future (unary requests). Part of
    the executor: it uses the executor's private answering and statistics."""

    def __init__(self, executor: BatchingExecutor, job: Job, started_ns: int) -> None:
        self._executor = executor
        self._job = job
        self._started_ns = started_ns
        # Held while a response is handed on, so one request's responses keep their order
        # even when a model sends from several threads.
        self._lock = threading.Lock()
        self._ended = False
        self._unary_result: Outputs | EngineError | None = None
        self._responses = 0  # sent so far (streamed requests)
        self._last_ns = started_ns  # when the previous response was handed on

    def send(
        self,
        outputs: Mapping[str, np.ndarray] | None = None,
        *,
        final: bool = False,
        error: EngineError | None = None,
    ) -> None:
        with self._lock:
            if self._ended:
                raise EngineError(
                    ErrorCode.INTERNAL,
                    f"model '{self._executor._label}' sent a response for request "
                    f"'{self._job.request_id}' after its final one",
                )
            self._ended = final
            job = self._job
            response = dict(outputs) if outputs is not None else None
            if response is not None:
                response = self._executor._take_outputs(job, response)
            if job.stream is not None:
                if response is not None or error is not None or final:
                    produced_ns = time.perf_counter_ns()
                    delivered = job.stream.put(StreamedResponse(response, error, final))
                    self._count_response(produced_ns, delivered, response, error)
            elif error is not None or response is not None:
                self._unary_result = error if error is not None else response
            if final:
                self._end(error)

    def _count_response(
        self,
        produced_ns: int,
        delivered: bool,
        response: Outputs | None,
        error: EngineError | None,
    ) -> None:
        """Response statistics by index, for streamed (decoupled) requests."""
        handed_ns = time.perf_counter_ns()
        if not delivered:
            outcome = ResponseOutcome.CANCEL
        elif error is not None:
            outcome = ResponseOutcome.FAIL
        elif response is None:
            outcome = ResponseOutcome.EMPTY
        else:
            outcome = ResponseOutcome.SUCCESS
        self._executor._statistics.record_response(
            self._responses, produced_ns - self._last_ns, handed_ns - produced_ns, outcome
        )
        self._responses += 1
        self._last_ns = handed_ns

    def _end(self, final_error: EngineError | None) -> None:
        job, result = self._job, self._unary_result
        if job.stream is None and result is None:
            result = EngineError(
                ErrorCode.INTERNAL,
                f"model '{self._executor._label}' ended request '{job.request_id}' "
                "without a response",
            )
        failed = result if isinstance(result, EngineError) else final_error
        self._executor._request_ended(job, self._started_ns, failed)
        self._executor._answer(job, {} if result is None else result)

    def fail(self, error: EngineError) -> None:
        """End the request with ``error`` unless it has ended already (execute raised)."""
        with contextlib.suppress(EngineError):  # it had ended: nothing to do
            self.send(error=error, final=True)

    def is_cancelled(self) -> bool:
        job = self._job
        return job.future.cancelled() or (job.stream is not None and job.stream.cancelled())
