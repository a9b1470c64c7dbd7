"""Dynamic batching as pure logic: which queued requests run together, and when.

Triton's ``dynamic_batching`` rules (core: ``dynamic_batch_scheduler.cc`` forms batches,
``scheduler_utils.cc`` holds the priority queue and its policies). Nothing here reads a
clock, blocks or locks: the caller passes the time in, and a driver around the scheduler
owns threads, waiting and answers. That keeps every rule testable with plain numbers.

Deliberate differences from Triton, each for a reason:

- Expired requests are found eagerly (a heap of expiry times) instead of only where the
  batch-forming walk happens to pass, so a timed-out request is answered when its time
  comes, not when it reaches the front.
- An expiry is due at its instant (``now >= t``; Triton: strictly after). ``wake_at`` names
  that instant, so a driver woken exactly then makes progress instead of spinning.
- A gRPC deadline is a second expiry (``DEADLINE_EXCEEDED``) that no policy delays.
- ``capacity`` bounds the whole queue even when ``max_queue_size`` is 0 (unbounded in
  Triton), so memory does not grow with offered load.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field

from inferd.engines.errors import EngineError, ErrorCode


class TimeoutAction(enum.Enum):
    """What a queue does with a request whose queue timeout expired (``ModelQueuePolicy``)."""

    REJECT = "reject"  # answered "Request timeout expired" (UNAVAILABLE), never run
    DELAY = "delay"  # kept, but behind every unexpired request of its priority level


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """One priority level's ``ModelQueuePolicy``, in seconds."""

    timeout_action: TimeoutAction = TimeoutAction.REJECT
    default_timeout_s: float = 0.0  # 0: no queue timeout
    # A request's own `timeout` may shorten the default, never lengthen it; with no
    # default timeout it is ignored (Triton keeps min(default, request) when both are set).
    allow_timeout_override: bool = False
    max_queue_size: int = 0  # 0: unbounded in Triton; inferd still caps (Scheduler capacity)

    def timeout_for(self, request_timeout_s: float) -> float:
        """The queue timeout a request gets (0: none), as Triton's PolicyQueue sets it."""
        timeout = self.default_timeout_s
        if self.allow_timeout_override and 0 < request_timeout_s < timeout:
            timeout = request_timeout_s
        return timeout


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """How one model version batches: its ``max_batch_size`` and ``dynamic_batching``."""

    max_batch_size: int  # rows per execution; 0: no batch dimension, one request per execution
    dynamic: bool  # False: no dynamic_batching, each request runs alone, in order
    # Empty means max_batch_size, which is what Triton's config normalization fills in.
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    preserve_ordering: bool = False  # for the driver (response order); batching ignores it
    priority_levels: int = 0  # 0: priorities off, one queue
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy = QueuePolicy()
    priority_queue_policy: Mapping[int, QueuePolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if any(not 0 < size <= self.max_batch_size for size in self.preferred_batch_sizes):
            raise ValueError(
                f"preferred batch sizes must be in [1, {self.max_batch_size}], "
                f"got {list(self.preferred_batch_sizes)}"
            )
        if self.max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {self.max_queue_delay_s}")


@dataclass(slots=True)
class PendingRequest:
    """What the scheduler knows of a queued request; treat it as frozen once added."""

    key: int  # unique per scheduler
    rows: int  # its batch dimension (1 for max_batch_size 0 models)
    signature: Hashable  # only requests with equal signatures (non-batch shapes) merge
    arrival: float  # clock seconds when added
    priority: int = 0  # the request's `priority` parameter; 0 (or out of range): default level
    timeout_s: float = 0.0  # the request's `timeout` parameter in seconds; 0: none
    deadline: float | None = None  # absolute clock seconds (gRPC deadline)


class RejectReason(enum.Enum):
    """Why a request left the queue unanswered by the model."""

    DEADLINE_EXCEEDED = "deadline exceeded"
    QUEUE_TIMEOUT = "queue timeout"

    @property
    def code(self) -> ErrorCode:
        return _REJECT_ERRORS[self][0]

    @property
    def message(self) -> str:
        return _REJECT_ERRORS[self][1]

    def error(self) -> EngineError:
        return EngineError(self.code, self.message)


_REJECT_ERRORS = {
    RejectReason.DEADLINE_EXCEEDED: (
        ErrorCode.DEADLINE_EXCEEDED,
        "request deadline expired while it waited in the queue",
    ),
    # Triton's dynamic batcher answers queue timeouts with exactly this (UNAVAILABLE).
    RejectReason.QUEUE_TIMEOUT: (ErrorCode.UNAVAILABLE, "Request timeout expired"),
}


@dataclass(frozen=True, slots=True)
class Rejection:
    request: PendingRequest
    reason: RejectReason


@dataclass(frozen=True, slots=True)
class Schedule:
    """One decision: what to run now, what to answer with an error, when to look again."""

    batch: tuple[PendingRequest, ...]  # empty: nothing to run now
    rejected: tuple[Rejection, ...]  # left the queue; answer each with its reason, never run
    # When schedule() should run again if nothing arrives (None: only on arrival). With a
    # batch it speaks for the queue left behind: `now` means another free instance can
    # take work at once.
    wake_at: float | None

    @property
    def rows(self) -> int:
        return sum(request.rows for request in self.batch)


class QueueFull(EngineError):
    """A request refused at once because its queue is full: UNAVAILABLE, as in Triton."""

    MESSAGE = "Exceeds maximum queue size"  # Triton's words; clients match on them

    def __init__(self, limit: int, priority_level: int | None = None) -> None:
        where = "" if priority_level is None else f" at priority level {priority_level}"
        super().__init__(
            ErrorCode.UNAVAILABLE, f"{self.MESSAGE}: {limit} requests already waiting{where}"
        )
        self.limit = limit
        self.priority_level = priority_level


@dataclass(slots=True, eq=False)
class _Entry:
    request: PendingRequest
    level: int
    seq: int  # arrival order across the scheduler; breaks ties and spots stale heap items
    deadline: float | None
    timeout_at: float | None  # None: no queue timeout, or already delayed
    delayed: bool = False


class _Level:
    """One priority level: unexpired requests in FIFO order, then delayed ones (Triton)."""

    __slots__ = ("delayed", "policy", "waiting")

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        # OrderedDict: O(1) removal by key (cancellation) and O(1) access to the front.
        self.waiting: OrderedDict[int, _Entry] = OrderedDict()
        self.delayed: OrderedDict[int, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self.waiting) + len(self.delayed)

    def entries(self) -> Iterator[_Entry]:
        yield from self.waiting.values()
        yield from self.delayed.values()


class Scheduler:
    """The queue of one model version and Triton's rules for batching it.

    Not thread-safe: the driver calls every method under one lock.
    """

    def __init__(self, policy: BatchingPolicy, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._policy = policy
        self._capacity = capacity
        self._one_at_a_time = not policy.dynamic or policy.max_batch_size == 0
        preferred = policy.preferred_batch_sizes or (policy.max_batch_size,)
        self._preferred = frozenset(preferred)
        self._max_preferred = max(preferred)
        self._entries: dict[int, _Entry] = {}
        self._levels: dict[int, _Level] = {}  # only levels holding requests
        # (time, seq, key) per deadline and queue timeout; items of requests that left
        # are dropped lazily and the heap is rebuilt before it outgrows the queue.
        self._expiries: list[tuple[float, int, int]] = []
        self._rows = 0
        self._seq = 0

    @property
    def policy(self) -> BatchingPolicy:
        return self._policy

    def __len__(self) -> int:
        return len(self._entries)

    def queued_rows(self) -> int:
        return self._rows

    def priority_level(self, priority: int) -> int:
        """The queue a request's `priority` lands in: lower numbers run first.

        Triton: 0, or anything above priority_levels, means the default level. A negative
        value is what an out-of-range unsigned value looks like here, so it goes there too.
        """
        levels = self._policy.priority_levels
        if levels == 0:
            return 0
        if 0 < priority <= levels:
            return priority
        return self._policy.default_priority_level

    def add(self, request: PendingRequest) -> None:
        """Queue a request, or raise QueueFull at once (its level's max_queue_size, capacity)."""
        key = request.key
        if key in self._entries:
            raise ValueError(f"request key {key} is already queued")
        limit = self._policy.max_batch_size
        if request.rows < 1 or (limit > 0 and request.rows > limit):
            raise ValueError(f"request {key} carries {request.rows} rows; expected 1 to {limit}")
        level_number = self.priority_level(request.priority)
        level = self._levels.get(level_number)
        policy = level.policy if level is not None else self._queue_policy(level_number)
        if policy.max_queue_size and level is not None and len(level) >= policy.max_queue_size:
            shown = level_number if self._policy.priority_levels else None
            raise QueueFull(policy.max_queue_size, shown)
        if len(self._entries) >= self._capacity:
            raise QueueFull(self._capacity)

        timeout = policy.timeout_for(request.timeout_s)
        timeout_at = request.arrival + timeout if timeout > 0 else None
        entry = _Entry(request, level_number, self._seq, request.deadline, timeout_at)
        self._seq += 1
        if level is None:
            level = self._levels[level_number] = _Level(policy)
        level.waiting[key] = entry
        self._entries[key] = entry
        self._rows += request.rows
        for due in (entry.deadline, timeout_at):
            if due is not None:
                heapq.heappush(self._expiries, (due, entry.seq, key))
        if len(self._expiries) > 2 * len(self._entries) + 64:
            self._rebuild_expiries()

    def remove(self, key: int) -> bool:
        """Take a cancelled request out; False when it is not queued (idempotent)."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._discard(entry)
        return True

    def drain(self) -> tuple[PendingRequest, ...]:
        """Empty the queue (shutdown), returning what it held in scheduling order."""
        requests = tuple(entry.request for entry in self._in_order())
        self._entries.clear()
        self._levels.clear()
        self._expiries.clear()
        self._rows = 0
        return requests

    def schedule(self, now: float) -> Schedule:
        """Called by a free instance: expire what is due, then pick the next batch."""
        rejected = self._expire(now)
        count, wait_until = self._plan(now)
        batch: tuple[PendingRequest, ...] = ()
        if count:
            taken = list(itertools.islice(self._in_order(), count))
            for entry in taken:
                self._discard(entry)
            batch = tuple(entry.request for entry in taken)
            next_count, wait_until = self._plan(now)
            if next_count:
                wait_until = now
        due = self._next_expiry()
        if due is not None and (wait_until is None or due < wait_until):
            wait_until = due
        return Schedule(batch, rejected, wait_until)

    def expire(self, now: float) -> tuple[tuple[Rejection, ...], float | None]:
        """Expire what is due without forming a batch, and say when the next expiry falls:
        for a timer that answers timeouts while every instance is busy."""
        rejected = self._expire(now)
        return rejected, self._next_expiry()

    def next_expiry(self) -> float | None:
        """When the earliest deadline or queue timeout of a queued request falls."""
        return self._next_expiry()

    def _queue_policy(self, level: int) -> QueuePolicy:
        if self._policy.priority_levels == 0:
            return self._policy.default_queue_policy
        return self._policy.priority_queue_policy.get(level, self._policy.default_queue_policy)

    def _in_order(self) -> Iterator[_Entry]:
        for level in sorted(self._levels):
            yield from self._levels[level].entries()

    def _plan(self, now: float) -> tuple[int, float | None]:
        """How many requests from the front form the batch now (0: wait until the float).

        Triton's GetDynamicBatch with an empty payload: walk in priority then FIFO order
        while the signature matches and rows fit max_batch_size, remembering the last
        prefix whose rows are a preferred size (or the prefix before the walk first passes
        the largest preferred size). That prefix goes at once unless the oldest walked
        request has waited max_queue_delay; otherwise everything walked goes when it cannot
        grow (mismatch, full, at the largest preferred size) or the delay is spent or 0.
        """
        order = self._in_order()
        first = next(order, None)
        if first is None:
            return 0, None
        if self._one_at_a_time:
            return 1, None
        signature = first.request.signature
        rows, count, oldest = first.request.rows, 1, first.request.arrival
        best = 1 if rows in self._preferred else 0
        blocked = False
        for entry in order:
            request = entry.request
            if not best and rows + request.rows > self._max_preferred:
                best = count
            if rows + request.rows > self._policy.max_batch_size or request.signature != signature:
                blocked = True  # Triton never skips over a request: order is kept
                break
            rows += request.rows
            count += 1
            oldest = min(oldest, request.arrival)
            if rows in self._preferred:
                best = count
        delay = self._policy.max_queue_delay_s
        # Compared as `now >= oldest + delay`, the very sum wake_at reports.
        delay_spent = delay > 0 and now >= oldest + delay
        if best and not delay_spent:
            return best, None
        if blocked or rows >= self._max_preferred or delay_spent or delay == 0:
            return count, None
        return 0, oldest + delay

    def _expire(self, now: float) -> tuple[Rejection, ...]:
        rejected: list[tuple[int, Rejection]] = []
        delayed: list[_Entry] = []
        while self._expiries and self._expiries[0][0] <= now:
            _, seq, key = heapq.heappop(self._expiries)
            entry = self._entries.get(key)
            if entry is None or entry.seq != seq:
                continue
            if entry.deadline is not None and now >= entry.deadline:
                self._discard(entry)
                rejected.append((seq, Rejection(entry.request, RejectReason.DEADLINE_EXCEEDED)))
            elif entry.timeout_at is not None and now >= entry.timeout_at:
                entry.timeout_at = None  # Triton: a delayed request has no timeout any more
                if self._levels[entry.level].policy.timeout_action is TimeoutAction.DELAY:
                    delayed.append(entry)
                else:
                    self._discard(entry)
                    rejected.append((seq, Rejection(entry.request, RejectReason.QUEUE_TIMEOUT)))
        # Triton delays requests as its walk meets them, so in queue order, not expiry order.
        for entry in sorted(delayed, key=lambda e: e.seq):
            if self._entries.get(entry.request.key) is entry:
                level = self._levels[entry.level]
                del level.waiting[entry.request.key]
                level.delayed[entry.request.key] = entry
                entry.delayed = True
        rejected.sort(key=lambda item: item[0])
        return tuple(rejection for _, rejection in rejected)

    def _next_expiry(self) -> float | None:
        while self._expiries:
            due, seq, key = self._expiries[0]
            entry = self._entries.get(key)
            if entry is not None and entry.seq == seq and due in (entry.deadline, entry.timeout_at):
                return due
            heapq.heappop(self._expiries)
        return None

    def _discard(self, entry: _Entry) -> None:
        key = entry.request.key
        del self._entries[key]
        level = self._levels[entry.level]
        del (level.delayed if entry.delayed else level.waiting)[key]
        if not level:
            del self._levels[entry.level]
        self._rows -= entry.request.rows

    def _rebuild_expiries(self) -> None:
        self._expiries = [
            (due, entry.seq, key)
            for key, entry in self._entries.items()
            for due in (entry.deadline, entry.timeout_at)
            if due is not None
        ]
        heapq.heapify(self._expiries)
