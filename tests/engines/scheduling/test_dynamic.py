"""The dynamic-batching scheduler as pure logic: plain numbers stand in for the clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.engines import EngineError, ErrorCode
from inferd.engines.repository.policies import batching_policy
from inferd.engines.scheduling.dynamic import (
    BatchingPolicy,
    PendingRequest,
    QueueFull,
    QueuePolicy,
    RejectReason,
    Schedule,
    Scheduler,
    TimeoutAction,
)
from tests.engines.repository.test_policies import CONFIG, _config


def _scheduler(capacity: int = 64, **fields: object) -> Scheduler:
    fields.setdefault("max_batch_size", 8)
    fields.setdefault("dynamic", True)
    return Scheduler(BatchingPolicy(**fields), capacity)  # type: ignore[arg-type]


def _add(
    scheduler: Scheduler, *keys: int, rows: int = 1, sig: str = "a", at: float = 0.0, **fields
) -> None:
    for key in keys:
        scheduler.add(PendingRequest(key, rows, sig, at, **fields))


def _keys(schedule: Schedule) -> list[int]:
    return [request.key for request in schedule.batch]


def _rejected(schedule: Schedule) -> dict[int, RejectReason]:
    return {rejection.request.key: rejection.reason for rejection in schedule.rejected}


# Batch formation


def test_without_delay_everything_compatible_goes_at_once() -> None:
    scheduler = _scheduler()
    _add(scheduler, 1, 2, 3)
    schedule = scheduler.schedule(0.0)
    assert _keys(schedule) == [1, 2, 3] and schedule.rows == 3
    assert schedule.wake_at is None and len(scheduler) == 0
    assert scheduler.schedule(0.0) == Schedule((), (), None)


def test_max_batch_size_caps_the_rows_and_the_rest_follows_in_order() -> None:
    scheduler = _scheduler(max_batch_size=4)
    _add(scheduler, *range(1, 7))
    first = scheduler.schedule(0.0)
    assert _keys(first) == [1, 2, 3, 4]
    assert first.wake_at == 0.0  # what is left can run on another free instance now
    assert _keys(scheduler.schedule(0.0)) == [5, 6]


def test_requests_carrying_several_rows_count_every_row() -> None:
    scheduler = _scheduler(max_batch_size=8)
    _add(scheduler, 1, 2, 3, rows=3)
    assert scheduler.queued_rows() == 9
    first = scheduler.schedule(0.0)
    assert _keys(first) == [1, 2] and first.rows == 6
    assert scheduler.queued_rows() == 3
    assert _keys(scheduler.schedule(0.0)) == [3]


def test_a_different_signature_ends_the_batch_and_is_never_skipped() -> None:
    scheduler = _scheduler(max_queue_delay_s=1.0)
    _add(scheduler, 1, 2, sig="a")
    _add(scheduler, 3, sig="b")
    _add(scheduler, 4, sig="a")
    # The batch cannot grow past the mismatch, so it goes at once despite the delay.
    assert _keys(scheduler.schedule(0.0)) == [1, 2]
    assert _keys(scheduler.schedule(0.0)) == [3]
    schedule = scheduler.schedule(0.0)
    assert _keys(schedule) == [] and schedule.wake_at == 1.0
    assert _keys(scheduler.schedule(1.0)) == [4]


def test_delay_waits_for_more_requests_then_sends_what_it_has() -> None:
    scheduler = _scheduler(max_queue_delay_s=0.1)
    _add(scheduler, 1, 2, at=0.0)
    waiting = scheduler.schedule(0.05)
    assert waiting.batch == () and waiting.wake_at == 0.1
    _add(scheduler, 3, at=0.07)
    assert scheduler.schedule(0.08).wake_at == 0.1  # the oldest request sets the budget
    assert _keys(scheduler.schedule(0.1)) == [1, 2, 3]


def test_delay_ends_as_soon_as_max_batch_size_is_reached() -> None:
    scheduler = _scheduler(max_batch_size=4, max_queue_delay_s=10.0)
    _add(scheduler, 1, 2, 3)
    assert scheduler.schedule(0.0).batch == ()
    _add(scheduler, 4)
    assert _keys(scheduler.schedule(0.0)) == [1, 2, 3, 4]


def test_the_largest_preferred_size_that_can_be_formed_goes_at_once() -> None:
    scheduler = _scheduler(max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_s=1.0)
    _add(scheduler, *range(1, 7), at=0.0)
    assert _keys(scheduler.schedule(0.0)) == [1, 2, 3, 4]
    rest = scheduler.schedule(0.0)
    assert rest.batch == () and rest.wake_at == 1.0  # 2 rows wait for 4 more
    _add(scheduler, *range(7, 17), at=0.5)
    assert _keys(scheduler.schedule(0.5)) == [5, 6, *range(7, 13)]  # 8 rows
    assert _keys(scheduler.schedule(0.5)) == [13, 14, 15, 16]


def test_a_batch_that_would_overshoot_the_largest_preferred_size_goes_at_once() -> None:
    scheduler = _scheduler(max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_s=1.0)
    _add(scheduler, 1, 2, rows=3)
    # 3 + 3 passes 4: waiting cannot make a preferred size out of this order.
    assert _keys(scheduler.schedule(0.0)) == [1]
    waiting = scheduler.schedule(0.0)
    assert waiting.batch == () and waiting.wake_at == 1.0


def test_once_the_delay_is_spent_everything_that_fits_goes_not_only_the_preferred_size() -> None:
    scheduler = _scheduler(max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_s=0.1)
    _add(scheduler, *range(1, 7), at=0.0)
    assert _keys(scheduler.schedule(0.2)) == [1, 2, 3, 4, 5, 6]


def test_without_delay_a_preferred_size_is_still_preferred() -> None:
    scheduler = _scheduler(max_batch_size=8, preferred_batch_sizes=(2,))
    _add(scheduler, 1, 2, 3)
    assert _keys(scheduler.schedule(0.0)) == [1, 2]
    assert _keys(scheduler.schedule(0.0)) == [3]


def test_no_preferred_sizes_means_max_batch_size() -> None:
    scheduler = _scheduler(max_batch_size=4, max_queue_delay_s=1.0)
    _add(scheduler, 1, rows=3)
    _add(scheduler, 2, rows=2)
    assert _keys(scheduler.schedule(0.0)) == [1]  # 3 + 2 passes 4


def test_without_dynamic_batching_each_request_runs_alone_in_order() -> None:
    scheduler = _scheduler(max_batch_size=8, dynamic=False)
    _add(scheduler, 1, 2, rows=2)
    _add(scheduler, 3, sig="b")
    for key in (1, 2, 3):
        schedule = scheduler.schedule(0.0)
        assert _keys(schedule) == [key]
    assert schedule.wake_at is None


def test_a_model_without_batch_dimension_runs_one_request_per_execution() -> None:
    scheduler = _scheduler(max_batch_size=0, max_queue_delay_s=1.0)
    _add(scheduler, 1, 2)
    first = scheduler.schedule(0.0)
    assert _keys(first) == [1] and first.wake_at == 0.0
    assert _keys(scheduler.schedule(0.0)) == [2]


# Priorities


def test_lower_level_numbers_run_first_and_out_of_range_priorities_get_the_default() -> None:
    scheduler = _scheduler(dynamic=False, priority_levels=3, default_priority_level=2)
    assert [scheduler.priority_level(p) for p in (0, 1, 2, 3, 4, -1)] == [2, 1, 2, 3, 2, 2]
    _add(scheduler, 1, priority=3)
    _add(scheduler, 2, priority=0)
    _add(scheduler, 3, priority=1)
    _add(scheduler, 4, priority=9)
    _add(scheduler, 5, priority=1)
    order = [_keys(scheduler.schedule(0.0)) for _ in range(5)]
    assert order == [[3], [5], [2], [4], [1]]


def test_a_batch_takes_requests_in_priority_order() -> None:
    scheduler = _scheduler(max_batch_size=3, priority_levels=2, default_priority_level=2)
    _add(scheduler, 1, 2)
    _add(scheduler, 3, 4, priority=1)
    assert _keys(scheduler.schedule(0.0)) == [3, 4, 1]
    assert _keys(scheduler.schedule(0.0)) == [2]


def test_without_priority_levels_the_priority_parameter_is_ignored() -> None:
    scheduler = _scheduler(dynamic=False)
    _add(scheduler, 1, priority=5)
    _add(scheduler, 2, priority=1)
    assert [_keys(scheduler.schedule(0.0)) for _ in range(2)] == [[1], [2]]


def test_each_level_has_its_own_queue_policy() -> None:
    scheduler = _scheduler(
        priority_levels=2,
        default_priority_level=2,
        default_queue_policy=QueuePolicy(max_queue_size=3),
        priority_queue_policy={1: QueuePolicy(max_queue_size=1, default_timeout_s=0.5)},
        max_queue_delay_s=10.0,
    )
    _add(scheduler, 1, priority=1)
    with pytest.raises(QueueFull) as caught:
        _add(scheduler, 2, priority=1)
    assert caught.value.priority_level == 1 and caught.value.limit == 1
    _add(scheduler, 3, 4, 5, priority=2)  # level 2 keeps the default policy: 3 fit
    with pytest.raises(QueueFull):
        _add(scheduler, 6)
    # Only level 1 has a queue timeout.
    schedule = scheduler.schedule(0.5)
    assert _rejected(schedule) == {1: RejectReason.QUEUE_TIMEOUT}
    assert schedule.wake_at == 10.0


# Expiry: deadlines and queue timeouts


def test_a_request_past_its_grpc_deadline_never_runs() -> None:
    scheduler = _scheduler(max_queue_delay_s=10.0)
    _add(scheduler, 1, deadline=0.3)
    _add(scheduler, 2)
    waiting = scheduler.schedule(0.0)
    assert waiting.batch == () and waiting.wake_at == 0.3  # wakes for the deadline
    expired = scheduler.schedule(0.3)
    assert _rejected(expired) == {1: RejectReason.DEADLINE_EXCEEDED}
    assert expired.batch == () and len(scheduler) == 1
    error = RejectReason.DEADLINE_EXCEEDED.error()
    assert error.code is ErrorCode.DEADLINE_EXCEEDED


def test_reject_policy_answers_request_timeout_expired() -> None:
    policy = QueuePolicy(TimeoutAction.REJECT, default_timeout_s=0.5)
    scheduler = _scheduler(max_queue_delay_s=1.0, default_queue_policy=policy)
    _add(scheduler, 1, at=0.0)
    _add(scheduler, 2, at=0.2)
    assert scheduler.schedule(0.0).wake_at == 0.5
    expired = scheduler.schedule(0.5)
    assert _rejected(expired) == {1: RejectReason.QUEUE_TIMEOUT}
    error = RejectReason.QUEUE_TIMEOUT.error()
    assert (error.code, error.message) == (ErrorCode.UNAVAILABLE, "Request timeout expired")
    assert expired.wake_at == 0.7
    assert _rejected(scheduler.schedule(0.7)) == {2: RejectReason.QUEUE_TIMEOUT}
    assert len(scheduler) == 0 and scheduler.queued_rows() == 0


def test_a_request_timeout_may_shorten_the_default_but_never_lengthen_it() -> None:
    policy = QueuePolicy(default_timeout_s=1.0, allow_timeout_override=True)
    scheduler = _scheduler(max_queue_delay_s=10.0, default_queue_policy=policy)
    _add(scheduler, 1, timeout_s=0.2)
    _add(scheduler, 2, timeout_s=5.0)
    assert _rejected(scheduler.schedule(0.2)) == {1: RejectReason.QUEUE_TIMEOUT}
    assert _rejected(scheduler.schedule(1.0)) == {2: RejectReason.QUEUE_TIMEOUT}


def test_request_timeouts_are_ignored_without_override_or_without_a_default() -> None:
    for policy in (
        QueuePolicy(default_timeout_s=1.0),
        QueuePolicy(allow_timeout_override=True),  # Triton: min(0 = none, t) keeps none
    ):
        scheduler = _scheduler(max_queue_delay_s=10.0, default_queue_policy=policy)
        _add(scheduler, 1, timeout_s=0.2)
        assert scheduler.schedule(0.5).rejected == ()


def test_delay_policy_moves_an_expired_request_behind_the_unexpired_ones_of_its_level() -> None:
    delay = QueuePolicy(TimeoutAction.DELAY, default_timeout_s=0.5)
    scheduler = _scheduler(
        dynamic=False,
        priority_levels=2,
        default_priority_level=2,
        priority_queue_policy={1: delay},
    )
    _add(scheduler, 1, priority=1, at=0.0)
    _add(scheduler, 2, priority=2, at=0.1)
    _add(scheduler, 3, priority=1, at=0.4)
    first = scheduler.schedule(0.6)
    assert first.rejected == () and _keys(first) == [3]
    # Delayed, yet still ahead of the lower level, and it has no timeout any more.
    assert _keys(scheduler.schedule(100.0)) == [1]
    assert _keys(scheduler.schedule(100.0)) == [2]


def test_delayed_requests_are_still_batched_and_still_obey_deadlines() -> None:
    delay = QueuePolicy(TimeoutAction.DELAY, default_timeout_s=0.5)
    scheduler = _scheduler(default_queue_policy=delay, max_queue_delay_s=10.0)
    _add(scheduler, 1, at=0.0)
    _add(scheduler, 2, at=0.0, deadline=2.0)
    _add(scheduler, 3, at=0.4)
    waiting = scheduler.schedule(0.5)
    assert waiting.batch == () and waiting.rejected == ()
    assert waiting.wake_at == 0.9  # request 3's timeout; 1 and 2 no longer have one
    assert _rejected(scheduler.schedule(2.0)) == {2: RejectReason.DEADLINE_EXCEEDED}
    assert _keys(scheduler.schedule(10.0)) == [1, 3]  # 3 was delayed at 0.9, after 1


# Cancellation and bounds


def test_a_removed_request_never_runs_and_remove_is_idempotent() -> None:
    scheduler = _scheduler()
    _add(scheduler, 1, 2, 3, rows=2)
    assert scheduler.remove(2) is True
    assert scheduler.remove(2) is False
    assert scheduler.remove(99) is False
    assert len(scheduler) == 2 and scheduler.queued_rows() == 4
    assert _keys(scheduler.schedule(0.0)) == [1, 3]


def test_capacity_refuses_at_once_even_without_max_queue_size() -> None:
    scheduler = _scheduler(capacity=2, max_queue_delay_s=1.0)
    _add(scheduler, 1, 2)
    with pytest.raises(QueueFull) as caught:
        _add(scheduler, 3)
    error = caught.value
    assert isinstance(error, EngineError) and error.code is ErrorCode.UNAVAILABLE
    assert error.message.startswith("Exceeds maximum queue size")
    assert error.priority_level is None and error.limit == 2
    assert len(scheduler) == 2
    assert _keys(scheduler.schedule(1.0)) == [1, 2]
    _add(scheduler, 3)


def test_add_refuses_requests_that_could_never_be_scheduled() -> None:
    scheduler = _scheduler(max_batch_size=4)
    _add(scheduler, 1)
    with pytest.raises(ValueError, match="already queued"):
        _add(scheduler, 1)
    with pytest.raises(ValueError, match="5 rows"):
        _add(scheduler, 2, rows=5)


def test_drain_empties_the_queue_in_scheduling_order() -> None:
    scheduler = _scheduler(priority_levels=2, default_priority_level=2, max_queue_delay_s=1.0)
    _add(scheduler, 1, deadline=5.0)
    _add(scheduler, 2, priority=1)
    assert [request.key for request in scheduler.drain()] == [2, 1]
    assert len(scheduler) == 0 and scheduler.schedule(10.0) == Schedule((), (), None)


def test_expiry_bookkeeping_stays_bounded_under_churn() -> None:
    scheduler = _scheduler(capacity=4, max_queue_delay_s=1.0)
    for key in range(10_000):
        _add(scheduler, key, deadline=1e9)
        scheduler.remove(key)
    assert len(scheduler._expiries) < 100


# A policy read from a config


def test_a_parsed_config_drives_the_scheduler() -> None:
    scheduler = Scheduler(batching_policy(_config(CONFIG)), capacity=64)
    _add(scheduler, 1, 2, 3, at=0.0)
    waiting = scheduler.schedule(0.0)
    assert waiting.batch == () and waiting.wake_at == pytest.approx(0.0001)
    _add(scheduler, 4, at=0.00005)
    assert _keys(scheduler.schedule(0.00005)) == [1, 2, 3, 4]  # preferred size 4


# Property: every request ends exactly one way, and every batch is well formed


@dataclass(frozen=True)
class _Add:
    rows: int
    signature: str
    priority: int
    timeout_s: float
    deadline_in: float | None


@dataclass(frozen=True)
class _Remove:
    step: int  # the step that added it (or nothing: removing an unknown key)


@dataclass(frozen=True)
class _Tick:
    seconds: float  # then a free instance calls schedule()


_ADD = st.builds(
    _Add,
    st.sampled_from([1, 1, 1, 2, 3]),
    st.sampled_from("aaab"),  # mostly compatible, so that batches form
    st.integers(-1, 4),
    st.sampled_from([0.0, 0.3, 2.0]),
    st.sampled_from([None, 0.2, 1.0]),
)
# Adds outnumber the rest so that requests pile up between schedules.
_STEP = st.one_of(
    *[_ADD] * 5,
    st.builds(_Remove, st.integers(0, 80)),
    st.builds(_Tick, st.sampled_from([0.0, 0.05, 0.4])),
)
_QUEUE_POLICY = st.builds(
    QueuePolicy,
    st.sampled_from(TimeoutAction),
    st.sampled_from([0.0, 0.25, 1.0]),
    st.booleans(),
    st.sampled_from([0, 0, 2, 5]),  # max_queue_size
)


@st.composite
def _policies(draw: st.DrawFn) -> BatchingPolicy:
    max_batch_size = draw(st.sampled_from([0, 1, 3, 8, 8]))
    levels = draw(st.integers(0, 3))
    sizes = st.integers(min(max_batch_size, 2), max_batch_size)
    return BatchingPolicy(
        max_batch_size=max_batch_size,
        dynamic=draw(st.sampled_from([True, True, True, False])),
        preferred_batch_sizes=tuple(
            sorted(set(draw(st.lists(sizes, max_size=2 if max_batch_size else 0))))
        ),
        max_queue_delay_s=draw(st.sampled_from([0.0, 0.1, 0.5])),
        priority_levels=levels,
        default_priority_level=draw(st.integers(1, levels)) if levels else 0,
        default_queue_policy=draw(_QUEUE_POLICY),
        priority_queue_policy=draw(st.dictionaries(st.integers(1, max(levels, 1)), _QUEUE_POLICY)),
    )


@settings(max_examples=300, deadline=None)
@given(
    policy=_policies(),
    steps=st.lists(_STEP, min_size=20, max_size=80),
    capacity=st.sampled_from([1, 4, 64]),
)
def test_every_request_is_batched_rejected_or_removed_exactly_once(
    policy: BatchingPolicy, steps: list[_Add | _Remove | _Tick], capacity: int
) -> None:
    scheduler = Scheduler(policy, capacity)
    queued: dict[int, PendingRequest] = {}
    outcomes: dict[int, str] = {}
    now = 0.0
    limit = max(policy.max_batch_size, 1)

    def check(schedule: Schedule) -> None:
        for rejection in schedule.rejected:
            assert rejection.request.key not in outcomes
            outcomes[rejection.request.key] = "rejected"
            del queued[rejection.request.key]
        if schedule.batch:
            assert len({request.signature for request in schedule.batch}) == 1
            assert schedule.rows <= limit
            if policy.max_batch_size == 0 or not policy.dynamic:
                assert len(schedule.batch) == 1
        else:  # a driver that waits for wake_at makes progress and never spins
            assert schedule.wake_at is None or schedule.wake_at > now
            assert schedule.wake_at is not None or not queued
        for request in schedule.batch:
            assert request.key not in outcomes
            outcomes[request.key] = "batched"
            del queued[request.key]
        assert len(scheduler) == len(queued)
        assert scheduler.queued_rows() == sum(request.rows for request in queued.values())

    for number, step in enumerate(steps):
        if isinstance(step, _Add):
            deadline = None if step.deadline_in is None else now + step.deadline_in
            request = PendingRequest(
                number,
                min(step.rows, limit),
                step.signature,
                now,
                step.priority,
                step.timeout_s,
                deadline,
            )
            try:
                scheduler.add(request)
            except QueueFull:
                outcomes[number] = "refused"
            else:
                queued[number] = request
        elif isinstance(step, _Remove):
            removed = scheduler.remove(step.step)
            assert removed == (step.step in queued)
            if removed:
                outcomes[step.step] = "removed"
                del queued[step.step]
        else:
            now += step.seconds
            check(scheduler.schedule(now))

    for _ in range(3 * len(queued) + 3):  # free instances keep coming until the queue is empty
        schedule = scheduler.schedule(now)
        check(schedule)
        if not queued:
            break
        if not schedule.batch and schedule.wake_at is not None:
            now = schedule.wake_at
    assert not queued and len(scheduler) == 0
    assert set(outcomes) == {n for n, step in enumerate(steps) if isinstance(step, _Add)}
