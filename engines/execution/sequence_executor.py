"""Execution instances fed by the sequence batcher (``sequence_batching``).

The same instance threads, answers and statistics as ``BatchingExecutor``; what differs
is the queue (``sequence.SequenceScheduler``: each sequence is pinned to one instance,
so every instance asks for its own work) and the control tensors (START, END, READY,
CORRID), which are filled in per request as it is queued. A timer thread frees
sequences left idle for ``max_sequence_idle_microseconds``.

Implicit state (``sequence_state.py``) is fed when a request is taken into a batch (its
sequence's previous request has run by then: both run on the same instance, in order)
and taken from the outputs as each request is answered; it is freed with its sequence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from inferd.engines.backends import BackendInstance, RequestInstance
from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.execution.executor import BatchingExecutor, Job, Outputs
from inferd.engines.execution.sequence_state import SequenceStates, StateLease, StateSpec
from inferd.engines.execution.streams import ResponseStream
from inferd.engines.options import DEFAULT_OPTIONS, RequestOptions
from inferd.engines.scheduling.dynamic import BatchingPolicy, PendingRequest
from inferd.engines.scheduling.sequence import (
    SequenceId,
    SequencePolicy,
    SequenceRequest,
    SequenceScheduler,
    SequencesFull,
    check_sequence,
    control_tensors,
)
from inferd.engines.statistics import FailureReason, ModelStatistics
from inferd.engines.types import BatchObserver


class SequenceBatchingExecutor(BatchingExecutor):
    """One model version served by the sequence batcher."""

    def __init__(
        self,
        label: str,
        instances: Sequence[BackendInstance | RequestInstance],
        policy: SequencePolicy,
        queue_capacity: int,
        statistics: ModelStatistics,
        clock: Callable[[], float] = time.monotonic,
        observer: BatchObserver | None = None,
        devices: Sequence[str] | None = None,
        states: Sequence[StateSpec] = (),
    ) -> None:
        # Set before the base class starts the instance threads, which read them.
        self._policy = policy
        self._states = SequenceStates(states, policy.max_batch_size > 0)
        self._extra_outputs = self._states.output_names
        self._leases: dict[int, StateLease] = {}  # running request key -> its state
        self._sequence_queue = SequenceScheduler(policy, queue_capacity)
        self._ids: dict[int, SequenceId] = {}  # queued request key -> its sequence
        self._running: dict[int, SequenceId] = {}  # the same for requests being run
        super().__init__(
            label,
            instances,
            BatchingPolicy(max_batch_size=policy.max_batch_size, dynamic=False),
            queue_capacity,
            statistics,
            clock,
            observer,
            devices,
        )
        # Control inputs and state tensors are gathered with the inputs on the host.
        self.takes_device_tensors = False

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
        """Queue one step of a sequence, with its control tensors, and wait for it.
        Outputs always come back to the host (``takes_device_tensors`` is False)."""
        try:
            sequence = options.sequence
            check_sequence(self._policy.model, sequence)
            controls = control_tensors(
                self._policy.controls, sequence, pending.rows, self._policy.max_batch_size > 0
            )
            if self._extra_outputs and pending.rows != 1:
                # A state belongs to one sequence: one row per request.
                raise EngineError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"model '{self._policy.model}' keeps implicit sequence state, so each "
                    f"request must have batch size 1, got {pending.rows}",
                )
        except Exception:
            self._statistics.record_failure(0, FailureReason.REJECTED)
            raise
        return await super().run(
            {**inputs, **controls},
            output_names,
            pending,
            trace,
            request_id=request_id,
            options=options,
            stream=stream,
        )

    def _queue(self, pending: PendingRequest, options: RequestOptions) -> None:
        sequence = options.sequence  # checked by run()
        try:
            self._sequence_queue.add(
                SequenceRequest(
                    pending.key,
                    sequence.sequence_id,
                    sequence.start,
                    sequence.end,
                    pending.rows,
                    pending.signature,
                    pending.arrival,
                )
            )
        except SequencesFull:
            self._statistics.record_failure(0, FailureReason.REJECTED)
            raise
        except Exception:
            self._statistics.record_failure(0, FailureReason.OTHER)
            raise
        self._ids[pending.key] = sequence.sequence_id

    def _unqueue(self, key: int) -> bool:
        self._ids.pop(key, None)
        return self._sequence_queue.remove(key)

    def _next_expiry(self) -> float | None:
        return self._sequence_queue.next_expiry()

    def _wake_instances(self) -> None:
        # A request is for one instance only: wake them all, the right one takes it.
        self._changed.notify_all()

    def _batch_ended(self, jobs: list[Job]) -> None:
        with self._changed:
            for job in jobs:
                self._leases.pop(job.pending.key, None)
            ids = tuple(self._running.pop(job.pending.key) for job in jobs)
            self._sequence_queue.finished(ids, self._clock())
            self._expiry_changed.notify()  # idle times start again

    def _next_batch(self, index: int) -> list[Job] | None:
        with self._changed:
            while not self._closed:
                schedule = self._sequence_queue.schedule(index, self._clock())
                if schedule.batch:
                    jobs = []
                    for request in schedule.batch:
                        self._statistics.request_dequeued()
                        self._running[request.key] = self._ids.pop(request.key)
                        job = self._jobs.pop(request.key)
                        if self._extra_outputs:
                            lease = self._states.begin(request.sequence_id, request.start)
                            self._leases[request.key] = lease
                            job.inputs = {**job.inputs, **lease.inputs}
                        jobs.append(job)
                    # Fed above, so an END in this batch still reads its state.
                    self._free_states()
                    # A sequence that ended may have handed its slot to a waiting one.
                    self._changed.notify_all()
                    return jobs
                timeout = None if schedule.wake_at is None else schedule.wake_at - self._clock()
                if timeout is None or timeout > 0:
                    self._changed.wait(timeout)
            return None

    def _keep_time(self) -> None:
        with self._changed:
            while not self._closed:
                promoted, self._timer_due = self._sequence_queue.expire(self._clock())
                self._free_states()
                if promoted:
                    self._changed.notify_all()
                timeout = None if self._timer_due is None else self._timer_due - self._clock()
                if timeout is None or timeout > 0:
                    self._expiry_changed.wait(timeout)

    def _free_states(self) -> None:
        """Drop the state of sequences the scheduler freed; under the lock."""
        for sequence_id in self._sequence_queue.take_released():
            self._states.free(sequence_id)

    def _execute(self, index: int, instance: BackendInstance, jobs: list[Job]) -> None:
        if not self._extra_outputs or len(jobs) == 1:
            super()._execute(index, instance, jobs)
            return
        # States with variable dims can differ in shape between sequences: only equal
        # shapes concatenate, so such a batch runs as one execution per shape.
        groups: dict[tuple[tuple[int, ...], ...], list[Job]] = {}
        for job in jobs:
            lease = self._leases.get(job.pending.key)
            groups.setdefault(lease.shapes() if lease else (), []).append(job)
        for group in groups.values():
            super()._execute(index, instance, group)

    def _take_outputs(self, job: Job, outputs: Outputs) -> Outputs:
        if not self._extra_outputs:
            return outputs
        with self._changed:
            lease = self._leases.get(job.pending.key)
            if lease is not None:
                self._states.update(lease, outputs)
        hidden = set(self._extra_outputs).difference(job.output_names)
        return {name: array for name, array in outputs.items() if name not in hidden}

    def close(self) -> None:
        super().close()
        with self._changed:
            self._states.clear()
