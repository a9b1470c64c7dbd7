"""The scheduling policies read from model configs: dynamic_batching and
sequence_batching, in seconds, with Triton's messages for what it refuses."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from inferd.engines import EngineError, ErrorCode
from inferd.engines.repository.policies import batching_policy, sequence_policy
from inferd.engines.scheduling.dynamic import BatchingPolicy, QueuePolicy, TimeoutAction
from inferd.engines.scheduling.sequence import ControlKind, Strategy
from inferd.protos import model_config_pb2

# dynamic_batching

CONFIG = """
name: "ranker"
max_batch_size: 16
dynamic_batching {
  preferred_batch_size: [ 8, 4 ]
  max_queue_delay_microseconds: 100
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy {
    timeout_action: DELAY
    default_timeout_microseconds: 250000
    allow_timeout_override: true
    max_queue_size: 10
  }
  priority_queue_policy {
    key: 1
    value { max_queue_size: 4 default_timeout_microseconds: 1500 }
  }
  priority_queue_policy [ { key: 3 value { timeout_action: REJECT } } ]
}
"""


def _config(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_from_config_reads_dynamic_batching_in_seconds() -> None:
    policy = batching_policy(_config(CONFIG))
    assert policy == BatchingPolicy(
        max_batch_size=16,
        dynamic=True,
        preferred_batch_sizes=(4, 8),
        max_queue_delay_s=0.0001,
        priority_levels=3,
        default_priority_level=2,
        default_queue_policy=QueuePolicy(TimeoutAction.DELAY, 0.25, True, 10),
        priority_queue_policy={
            1: QueuePolicy(max_queue_size=4, default_timeout_s=0.0015),
            3: QueuePolicy(),
        },
    )


def test_from_config_without_dynamic_batching_runs_requests_alone() -> None:
    policy = batching_policy(_config('name: "m" max_batch_size: 8'))
    assert policy == BatchingPolicy(max_batch_size=8, dynamic=False)
    empty = batching_policy(_config('name: "m" max_batch_size: 8 dynamic_batching {}'))
    assert empty.dynamic and empty.preferred_batch_sizes == () and empty.max_queue_delay_s == 0


@pytest.mark.parametrize(
    ("batching", "message"),
    [
        ("preferred_batch_size: 0", "dynamic batching preferred size must be positive for m"),
        (
            "preferred_batch_size: 9",
            "dynamic batching preferred size must be <= max batch size for m",
        ),
        ("priority_levels: 2", "default priority level must be in range [1, 2] for m"),
        (
            "priority_levels: 2 default_priority_level: 1 "
            "priority_queue_policy { key: 3 value {} }",
            "priority queue policy must have priority level in range [1, 2] for m",
        ),
        (
            "preserve_ordering: true priority_levels: 2 default_priority_level: 1",
            "Only one priority level is allowed when 'preserve_ordering' is true for m",
        ),
        (
            "preserve_ordering: true default_queue_policy "
            "{ timeout_action: DELAY default_timeout_microseconds: 5 }",
            "Queue policy can not have DELAY as timeout action when 'preserve_ordering' "
            "is true for m",
        ),
    ],
)
def test_from_config_rejects_what_triton_rejects(batching: str, message: str) -> None:
    config = _config(f'name: "m" max_batch_size: 8 dynamic_batching {{ {batching} }}')
    with pytest.raises(EngineError) as caught:
        batching_policy(config)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert caught.value.message == message


# sequence_batching


def test_direct_is_the_default_and_idle_defaults_to_one_second() -> None:
    policy = sequence_policy(
        _config('name: "m" max_batch_size: 8 sequence_batching {}'), instances=2
    )
    assert policy.strategy is Strategy.DIRECT and policy.idle_s == 1.0
    assert policy.live_capacity == 16


def test_oldest_reads_its_fields_and_controls() -> None:
    policy = sequence_policy(
        _config(
            """name: "m" max_batch_size: 8
            sequence_batching {
              max_sequence_idle_microseconds: 5000000
              oldest { max_candidate_sequences: 3 preferred_batch_size: [2, 4]
                       max_queue_delay_microseconds: 1000 }
              control_input [
                { name: "S" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] } ] },
                { name: "R" control [ { kind: CONTROL_SEQUENCE_READY fp32_false_true: [0, 1] } ] },
                { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] }
              ]
            }"""
        ),
        instances=2,
    )
    assert policy.strategy is Strategy.OLDEST and policy.live_capacity == 3
    assert policy.preferred_batch_sizes == (2, 4) and policy.max_queue_delay_s == 0.001
    assert policy.idle_s == 5.0
    assert [(c.name, c.kind) for c in policy.controls] == [
        ("S", ControlKind.START),
        ("R", ControlKind.READY),
        ("C", ControlKind.CORRID),
    ]


def test_control_without_values_is_refused() -> None:
    config = _config(
        """name: "m" max_batch_size: 1 sequence_batching {
        control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ] }"""
    )
    with pytest.raises(EngineError, match="exactly two values"):
        sequence_policy(config, 1)
