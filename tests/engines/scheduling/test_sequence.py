"""The sequence batcher as pure logic: plain numbers stand in for the clock."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from google.protobuf import text_format

from inferd.engines import EngineError, ErrorCode
from inferd.engines.options import SequenceParameters
from inferd.engines.repository.policies import sequence_policy
from inferd.engines.scheduling.sequence import (
    SequencePolicy,
    SequenceRequest,
    SequenceScheduler,
    SequencesFull,
    Strategy,
    control_tensors,
)
from inferd.protos import model_config_pb2

_keys = itertools.count()


def _policy(**fields: object) -> SequencePolicy:
    fields.setdefault("model", "m")
    fields.setdefault("max_batch_size", 4)
    fields.setdefault("instances", 1)
    return SequencePolicy(**fields)  # type: ignore[arg-type]


def _request(
    sequence_id: int | str,
    *,
    start: bool = False,
    end: bool = False,
    at: float = 0.0,
    sig: str = "a",
) -> SequenceRequest:
    return SequenceRequest(next(_keys), sequence_id, start, end, 1, sig, at)


def _ids(scheduler: SequenceScheduler, instance: int = 0, now: float = 0.0) -> list[object]:
    return [request.sequence_id for request in scheduler.schedule(instance, now).batch]


def _config(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_control_tensors_fill_flags_ready_and_the_id() -> None:
    config = _config(
        """name: "m" max_batch_size: 8 sequence_batching { control_input [
        { name: "S" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] } ] },
        { name: "E" control [ { kind: CONTROL_SEQUENCE_END bool_false_true: [false, true] } ] },
        { name: "R" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [0, 1] } ] },
        { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] } ] }"""
    )
    policy = sequence_policy(config, 1)
    started = SequenceParameters(7, start=True)
    tensors = control_tensors(policy.controls, started, 2, True)
    assert tensors["S"].tolist() == [[1], [1]] and tensors["S"].dtype == np.int32
    assert tensors["E"].tolist() == [[False], [False]]
    assert tensors["R"].tolist() == [[1], [1]]
    assert tensors["C"].tolist() == [[7], [7]] and tensors["C"].dtype == np.uint64
    with pytest.raises(EngineError, match="holds integers"):
        control_tensors(policy.controls, SequenceParameters("x"), 1, True)


# Scheduling


def test_a_non_start_request_for_an_unknown_sequence_is_refused() -> None:
    scheduler = SequenceScheduler(_policy(), 64)
    with pytest.raises(EngineError) as caught:
        scheduler.add(_request(5))
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert caught.value.message == (
        "inference request for sequence 5 to model 'm' must specify the START flag on the "
        "first request of the sequence"
    )


def test_a_batch_holds_one_request_per_sequence_in_order() -> None:
    scheduler = SequenceScheduler(_policy(), 64)
    scheduler.add(_request(1, start=True))
    scheduler.add(_request(1))
    scheduler.add(_request(2, start=True))
    first = scheduler.schedule(0, 0.0).batch
    assert [r.sequence_id for r in first] == [1, 2] and first[0].start
    scheduler.finished((1, 2), 0.0)
    assert _ids(scheduler) == [1]
    assert _ids(scheduler) == []


def test_end_frees_the_sequence() -> None:
    scheduler = SequenceScheduler(_policy(), 64)
    scheduler.add(_request(1, start=True, end=True))
    assert _ids(scheduler) == [1]
    assert scheduler.live_sequences() == 0
    with pytest.raises(EngineError, match="START flag"):
        scheduler.add(_request(1))


def test_a_request_after_a_queued_end_is_refused() -> None:
    scheduler = SequenceScheduler(_policy(), 64)
    scheduler.add(_request(1, start=True))
    scheduler.add(_request(1, end=True))
    with pytest.raises(EngineError, match="START flag"):
        scheduler.add(_request(1))


def test_sequences_stay_on_their_instance() -> None:
    scheduler = SequenceScheduler(_policy(max_batch_size=2, instances=2), 64)
    scheduler.add(_request(1, start=True))
    scheduler.add(_request(2, start=True))
    assert _ids(scheduler, 0) == [1]
    assert _ids(scheduler, 1) == [2]
    scheduler.finished((1, 2), 0.0)
    scheduler.add(_request(2))
    assert _ids(scheduler, 0) == []
    assert _ids(scheduler, 1) == [2]


def test_full_slots_send_new_sequences_to_a_bounded_backlog() -> None:
    scheduler = SequenceScheduler(_policy(max_batch_size=1, backlog_capacity=1), 64)
    scheduler.add(_request(1, start=True))
    scheduler.add(_request(2, start=True))  # waits for a slot
    with pytest.raises(SequencesFull) as caught:
        scheduler.add(_request(3, start=True))
    assert caught.value.code is ErrorCode.UNAVAILABLE
    assert scheduler.backlog() == 1
    assert _ids(scheduler) == [1]
    scheduler.finished((1,), 0.0)
    assert _ids(scheduler) == []  # 2 has no slot yet
    scheduler.add(_request(1, end=True))
    assert _ids(scheduler) == [1]  # its end hands the slot to 2
    assert _ids(scheduler) == [2]


def test_queue_capacity_bounds_the_queued_requests() -> None:
    scheduler = SequenceScheduler(_policy(), 2)
    scheduler.add(_request(1, start=True))
    scheduler.add(_request(1))
    with pytest.raises(SequencesFull, match="Exceeds maximum queue size"):
        scheduler.add(_request(1))


def test_idle_sequences_are_freed_and_their_slot_reused() -> None:
    scheduler = SequenceScheduler(_policy(max_batch_size=1, idle_s=2.0), 64)
    scheduler.add(_request(1, start=True, at=0.0))
    scheduler.add(_request(2, start=True, at=0.5))
    assert _ids(scheduler, now=0.5) == [1]
    assert scheduler.expire(10.0) == (False, None)  # 1 is running: never idle
    scheduler.finished((1,), 1.0)
    assert scheduler.next_expiry() == 3.0
    assert scheduler.expire(2.9) == (False, 3.0)
    assert scheduler.expire(3.0) == (True, None)  # 2 takes the freed slot
    with pytest.raises(EngineError, match="START flag"):
        scheduler.add(_request(1))
    assert _ids(scheduler, now=3.0) == [2]


def test_direct_waits_for_its_delay_unless_every_live_slot_is_ready() -> None:
    scheduler = SequenceScheduler(_policy(max_queue_delay_s=1.0), 64)
    scheduler.add(_request(1, start=True, at=0.0))
    scheduler.add(_request(2, start=True, at=0.0))
    assert _ids(scheduler, now=0.0) == [1, 2]  # both live slots ready
    scheduler.finished((1, 2), 0.0)
    scheduler.add(_request(1, at=0.1))
    schedule = scheduler.schedule(0, 0.2)
    assert schedule.batch == () and schedule.wake_at == pytest.approx(1.1)
    assert _ids(scheduler, now=1.1) == [1]


def test_direct_minimum_slot_utilization() -> None:
    policy = _policy(max_queue_delay_s=1.0, minimum_slot_utilization=0.5)
    scheduler = SequenceScheduler(policy, 64)
    for sequence_id in (1, 2, 3):
        scheduler.add(_request(sequence_id, start=True))
    scheduler.schedule(0, 0.0)
    scheduler.finished((1, 2, 3), 0.0)
    scheduler.add(_request(1))
    assert _ids(scheduler) == []  # 1 of 4 slots
    scheduler.add(_request(2))
    assert _ids(scheduler) == [1, 2]  # 2 of 4: half


def test_oldest_batches_preferred_sizes_and_one_request_per_sequence() -> None:
    policy = _policy(
        strategy=Strategy.OLDEST,
        max_batch_size=8,
        max_candidate_sequences=8,
        preferred_batch_sizes=(2,),
        max_queue_delay_s=1.0,
    )
    scheduler = SequenceScheduler(policy, 64)
    scheduler.add(_request(1, start=True))
    scheduler.add(_request(1))
    assert _ids(scheduler) == []  # one sequence, below the preferred size
    scheduler.add(_request(2, start=True))
    assert _ids(scheduler) == [1, 2]
    scheduler.finished((1, 2), 0.0)
    assert _ids(scheduler, now=0.5) == []
    assert _ids(scheduler, now=1.0) == [1]  # the delay is spent


def test_oldest_caps_live_sequences_at_max_candidate_sequences() -> None:
    policy = _policy(strategy=Strategy.OLDEST, max_candidate_sequences=1, instances=2)
    scheduler = SequenceScheduler(policy, 64)
    scheduler.add(_request("a", start=True))
    scheduler.add(_request("b", start=True))
    assert scheduler.live_sequences() == 1 and scheduler.backlog() == 1


def test_requests_of_another_shape_wait_for_a_later_batch() -> None:
    scheduler = SequenceScheduler(_policy(), 64)
    scheduler.add(_request(1, start=True, sig="a"))
    scheduler.add(_request(2, start=True, sig="b"))
    assert _ids(scheduler) == [1]
    assert _ids(scheduler) == [2]


def test_cancelling_a_backlogged_start_drops_the_sequence() -> None:
    scheduler = SequenceScheduler(_policy(max_batch_size=1), 64)
    scheduler.add(_request(1, start=True))
    waiting = _request(2, start=True)
    scheduler.add(waiting)
    assert scheduler.remove(waiting.key) and not scheduler.remove(waiting.key)
    assert scheduler.backlog() == 0 and len(scheduler) == 1
