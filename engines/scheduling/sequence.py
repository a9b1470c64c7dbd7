"""Triton's sequence batcher as pure logic: which sequence runs where, and when.

A sequence is the requests that share a correlation id (``sequence_id``) from its START
to its END. Every request of a sequence runs on the instance the sequence was given, in
arrival order, at most one request per sequence per batch, so a stateful model sees its
steps in order. Nothing here reads a clock, blocks or locks: the driver
(``sequence_executor.py``) passes the time in and owns threads and answers.

Strategies (``sequence_batching``):

- ``direct`` (Triton's default): a live sequence owns one of ``max_batch_size`` slots of
  one instance. A batch takes the next request of each slot of that instance that has
  one. It goes at once when every live slot of the instance is ready, when the ready
  slots reach ``minimum_slot_utilization``, when ``max_queue_delay_microseconds`` is 0,
  or when the oldest ready request has waited that long.
- ``oldest``: up to ``max_candidate_sequences`` live sequences, spread over the
  instances; each instance batches the oldest waiting request of each of its sequences
  like the dynamic batcher (``preferred_batch_size``, ``max_queue_delay_microseconds``).

Deliberate differences from Triton, each for a reason:

- Only ready slots run: Triton's direct batcher also feeds a row with READY=0 for every
  empty slot. inferd never does, so a model reads READY=1 on every row it is given.
- Capacity is bounded: beyond the live-sequence cap, new sequences wait in a backlog of
  ``backlog_capacity`` sequences, and every queued request counts against
  ``queue_capacity``; beyond either, UNAVAILABLE at once.
- A non-START request is checked against the sequences known when it arrives (Triton
  does the same) and refused at once; no queue timeouts or deadlines apply to sequence
  requests (Triton's sequence batcher has no queue policy either).
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.options import SequenceId, SequenceParameters

# Triton's default max_sequence_idle_microseconds.
DEFAULT_IDLE_S = 1.0


class Strategy(enum.Enum):
    DIRECT = "direct"
    OLDEST = "oldest"


class ControlKind(enum.Enum):
    START = "CONTROL_SEQUENCE_START"
    END = "CONTROL_SEQUENCE_END"
    READY = "CONTROL_SEQUENCE_READY"
    CORRID = "CONTROL_SEQUENCE_CORRID"


@dataclass(frozen=True, slots=True)
class ControlInput:
    """One tensor the server fills in per request: a flag (false, true values) or the id."""

    name: str
    kind: ControlKind
    dtype: np.dtype
    false_value: object = 0
    true_value: object = 1


@dataclass(frozen=True, slots=True)
class SequencePolicy:
    """One model version's ``sequence_batching``, read once at load."""

    model: str
    max_batch_size: int
    instances: int
    strategy: Strategy = Strategy.DIRECT
    idle_s: float = DEFAULT_IDLE_S
    max_queue_delay_s: float = 0.0
    minimum_slot_utilization: float = 0.0
    max_candidate_sequences: int = 1024
    preferred_batch_sizes: tuple[int, ...] = ()
    controls: tuple[ControlInput, ...] = ()
    backlog_capacity: int = 1024

    @property
    def slots_per_instance(self) -> int:
        return max(1, self.max_batch_size)

    @property
    def live_capacity(self) -> int:
        """How many sequences may hold an instance at once."""
        if self.strategy is Strategy.DIRECT:
            return self.slots_per_instance * self.instances
        return self.max_candidate_sequences


def control_tensors(
    controls: tuple[ControlInput, ...],
    parameters: SequenceParameters,
    rows: int,
    batched: bool,
) -> dict[str, np.ndarray]:
    """The control inputs of one request: shape [rows, 1] (batched) or [1]."""
    tensors = {}
    for control in controls:
        if control.kind is ControlKind.CORRID:
            corrid = parameters.sequence_id
            if control.dtype == np.object_:
                value: object = str(corrid).encode()
            elif isinstance(corrid, str):
                raise EngineError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"sequence id '{corrid}' is a string but the model's CONTROL_SEQUENCE_CORRID "
                    f"tensor '{control.name}' holds integers",
                )
            else:
                value = corrid
        else:
            on = {
                ControlKind.START: parameters.start,
                ControlKind.END: parameters.end,
                ControlKind.READY: True,  # only ready slots ever run in inferd
            }[control.kind]
            value = control.true_value if on else control.false_value
        shape = (rows, 1) if batched else (1,)
        array = np.empty(shape, dtype=control.dtype)
        array.fill(value)  # type: ignore[arg-type]
        tensors[control.name] = array
    return tensors


def check_sequence(model: str, sequence: SequenceParameters) -> None:
    """A request to a sequence model must name its sequence (0 or "" names none)."""
    if not sequence.given:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"inference request to model '{model}' must specify a non-zero or non-empty "
            "correlation ID",
        )


@dataclass(slots=True)
class SequenceRequest:
    """What the sequence scheduler knows of a queued request."""

    key: int  # unique per scheduler
    sequence_id: SequenceId
    start: bool
    end: bool
    rows: int
    signature: Hashable  # only requests with equal signatures share a batch
    arrival: float


@dataclass(frozen=True, slots=True)
class SequenceSchedule:
    """One instance's decision: what to run now, and when to look again for a batch that
    waits on its queue delay (None: when something changes). Idle sequences are the
    timer's business (``expire``), never an instance's."""

    batch: tuple[SequenceRequest, ...]
    wake_at: float | None


class SequencesFull(EngineError):
    """A request refused at once: too many sequences or queued requests (UNAVAILABLE)."""

    def __init__(self, detail: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, detail)


@dataclass(slots=True, eq=False)
class _Sequence:
    sequence_id: SequenceId
    queue: deque[SequenceRequest] = field(default_factory=deque)
    instance: int | None = None  # None: in the backlog, waiting for a slot
    open: bool = True  # after the requests queued so far: not yet ended
    in_flight: int = 0  # requests of it running now
    last_seen: float = 0.0


class SequenceScheduler:
    """The live sequences of one model version and the requests queued for them.

    Not thread-safe: the driver calls every method under one lock.
    """

    def __init__(self, policy: SequencePolicy, queue_capacity: int) -> None:
        if queue_capacity < 1:
            raise ValueError(f"queue_capacity must be >= 1, got {queue_capacity}")
        self._policy = policy
        self._queue_capacity = queue_capacity
        self._sequences: dict[SequenceId, _Sequence] = {}
        self._backlog: OrderedDict[SequenceId, _Sequence] = OrderedDict()
        self._live = [0] * policy.instances  # sequences holding each instance
        self._queued: dict[int, _Sequence] = {}  # request key -> its sequence
        self._released: list[SequenceId] = []  # freed since take_released()
        preferred = policy.preferred_batch_sizes or (policy.slots_per_instance,)
        self._preferred = preferred

    @property
    def policy(self) -> SequencePolicy:
        return self._policy

    def __len__(self) -> int:
        return len(self._queued)

    def live_sequences(self) -> int:
        return sum(self._live)

    def backlog(self) -> int:
        return len(self._backlog)

    def add(self, request: SequenceRequest) -> None:
        """Queue a request, or raise: unknown sequence (INVALID_ARGUMENT), full (UNAVAILABLE)."""
        sequence = self._sequences.get(request.sequence_id)
        if not request.start and (sequence is None or not sequence.open):
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                f"inference request for sequence {request.sequence_id} to model "
                f"'{self._policy.model}' must specify the START flag on the first request of "
                "the sequence",
            )
        if len(self._queued) >= self._queue_capacity:
            raise SequencesFull(
                f"Exceeds maximum queue size: {self._queue_capacity} requests already waiting"
            )
        if sequence is None:
            # A START reusing an id that is live restarts it where it is (Triton: the
            # earlier sequence did not end correctly; the slot carries on).
            sequence = _Sequence(request.sequence_id)
            instance = self._free_instance()
            if instance is None:
                if len(self._backlog) >= self._policy.backlog_capacity:
                    raise SequencesFull(
                        f"model '{self._policy.model}' has {self.live_sequences()} live "
                        f"sequences and {len(self._backlog)} waiting for a slot; retry later"
                    )
                self._backlog[request.sequence_id] = sequence
            else:
                self._assign(sequence, instance)
            self._sequences[request.sequence_id] = sequence
        sequence.open = not request.end
        sequence.last_seen = request.arrival
        sequence.queue.append(request)
        self._queued[request.key] = sequence

    def remove(self, key: int) -> bool:
        """Take a cancelled request out; False when it is not queued (idempotent)."""
        sequence = self._queued.pop(key, None)
        if sequence is None:
            return False
        for request in sequence.queue:
            if request.key == key:
                sequence.queue.remove(request)
                break
        if not sequence.queue and sequence.instance is None:
            # It never got a slot and has nothing left to run.
            self._backlog.pop(sequence.sequence_id, None)
            del self._sequences[sequence.sequence_id]
        return True

    def schedule(self, instance: int, now: float) -> SequenceSchedule:
        """Called by a free instance: its next batch, or when to ask again."""
        heads = [
            sequence.queue[0]
            for sequence in self._sequences.values()
            if sequence.instance == instance and sequence.queue
        ]
        if not heads:
            return SequenceSchedule((), None)
        heads.sort(key=lambda request: request.arrival)
        signature = heads[0].signature
        limit = self._policy.slots_per_instance
        batch: list[SequenceRequest] = []
        rows = 0
        for request in heads:
            if request.signature != signature or (rows + request.rows > limit and batch):
                continue
            batch.append(request)
            rows += request.rows
            if rows >= limit:
                break
        count = self._batch_size(instance, batch, now)
        if count == 0:
            return SequenceSchedule((), batch[0].arrival + self._policy.max_queue_delay_s)
        taken = tuple(batch[:count])
        for request in taken:
            self._dispatch(request, now)
        return SequenceSchedule(taken, None)

    def finished(self, keys: tuple[SequenceId, ...], now: float) -> None:
        """The requests of these sequences that ran have ended: idle time counts again."""
        for sequence_id in keys:
            sequence = self._sequences.get(sequence_id)
            if sequence is not None and sequence.in_flight > 0:
                sequence.in_flight -= 1
                sequence.last_seen = now

    def expire(self, now: float) -> tuple[bool, float | None]:
        """Free sequences idle for ``max_sequence_idle_microseconds``; (whether a backlogged
        sequence got a slot, when the next one may go idle)."""
        promoted = False
        idle = self._policy.idle_s
        for sequence in list(self._sequences.values()):
            if self._is_idle(sequence) and now >= sequence.last_seen + idle:
                promoted |= self._release(sequence)
        return promoted, self._next_idle()

    def next_expiry(self) -> float | None:
        return self._next_idle()

    def take_released(self) -> tuple[SequenceId, ...]:
        """The sequences freed (ended or idle) since the last call: their state can go."""
        released, self._released = tuple(self._released), []
        return released

    def drain(self) -> tuple[SequenceRequest, ...]:
        """Empty everything (shutdown), returning what was queued."""
        requests = tuple(request for s in self._sequences.values() for request in s.queue)
        self._sequences.clear()
        self._backlog.clear()
        self._queued.clear()
        self._released.clear()
        self._live = [0] * self._policy.instances
        return requests

    def _batch_size(self, instance: int, batch: list[SequenceRequest], now: float) -> int:
        """How many of the ready heads go now (0: wait for more)."""
        policy = self._policy
        delay = policy.max_queue_delay_s
        oldest = batch[0].arrival
        if delay == 0 or now >= oldest + delay:
            return len(batch)
        rows = sum(request.rows for request in batch)
        if policy.strategy is Strategy.DIRECT:
            if len(batch) >= self._live[instance] or rows >= policy.slots_per_instance:
                return len(batch)  # every live slot of the instance is ready
            wanted = math.ceil(policy.minimum_slot_utilization * policy.slots_per_instance)
            return len(batch) if 0 < wanted <= len(batch) else 0
        if rows >= policy.slots_per_instance:
            return len(batch)
        # The largest preferred size that the ready requests fill.
        filled = 0
        for count in range(1, len(batch) + 1):
            if sum(request.rows for request in batch[:count]) in self._preferred:
                filled = count
        if filled and policy.preferred_batch_sizes:
            return filled
        return 0

    def _dispatch(self, request: SequenceRequest, now: float) -> None:
        sequence = self._queued.pop(request.key)
        sequence.queue.popleft()
        sequence.in_flight += 1
        sequence.last_seen = now
        if request.end and not sequence.queue:
            self._release(sequence)

    def _is_idle(self, sequence: _Sequence) -> bool:
        return sequence.instance is not None and not sequence.queue and not sequence.in_flight

    def _next_idle(self) -> float | None:
        times = [s.last_seen for s in self._sequences.values() if self._is_idle(s)]
        return min(times) + self._policy.idle_s if times else None

    def _release(self, sequence: _Sequence) -> bool:
        """Free a sequence's slot and hand it to the oldest backlogged sequence."""
        del self._sequences[sequence.sequence_id]
        self._released.append(sequence.sequence_id)
        assert sequence.instance is not None
        self._live[sequence.instance] -= 1
        sequence.instance = None
        if not self._backlog:
            return False
        instance = self._free_instance()
        assert instance is not None
        _, waiting = self._backlog.popitem(last=False)
        self._assign(waiting, instance)
        return True

    def _assign(self, sequence: _Sequence, instance: int) -> None:
        sequence.instance = instance
        self._live[instance] += 1

    def _free_instance(self) -> int | None:
        """The instance with the fewest live sequences, if the cap leaves room."""
        if self.live_sequences() >= self._policy.live_capacity:
            return None
        index = min(range(len(self._live)), key=self._live.__getitem__)
        if self._policy.strategy is Strategy.DIRECT and (
            self._live[index] >= self._policy.slots_per_instance
        ):
            return None
        return index
