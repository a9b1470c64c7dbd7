"""The scheduling policies a model's config sets, read and checked once at load.

The schedulers (``inferd.engines.scheduling``) are pure logic over these policies and
never see a config; this is where ``dynamic_batching`` and ``sequence_batching`` become
them, with Triton's validation messages.
"""

from __future__ import annotations

import numpy as np

from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.scheduling.dynamic import BatchingPolicy, QueuePolicy, TimeoutAction
from inferd.engines.scheduling.sequence import (
    DEFAULT_IDLE_S,
    ControlInput,
    ControlKind,
    SequencePolicy,
    Strategy,
)
from inferd.protos import model_config_pb2

_MICROSECONDS = 1_000_000


def _invalid(message: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_ARGUMENT, message)


def batching_policy(config: model_config_pb2.ModelConfig) -> BatchingPolicy:
    """Read a model config; invalid batching fields fail with Triton's messages."""
    if not config.HasField("dynamic_batching"):
        return BatchingPolicy(max_batch_size=config.max_batch_size, dynamic=False)
    _check_dynamic_batching(config)
    batching = config.dynamic_batching
    return BatchingPolicy(
        max_batch_size=config.max_batch_size,
        dynamic=True,
        preferred_batch_sizes=tuple(sorted(set(batching.preferred_batch_size))),
        max_queue_delay_s=batching.max_queue_delay_microseconds / _MICROSECONDS,
        preserve_ordering=batching.preserve_ordering,
        priority_levels=batching.priority_levels,
        default_priority_level=batching.default_priority_level,
        default_queue_policy=queue_policy(batching.default_queue_policy),
        priority_queue_policy={
            level: queue_policy(policy)
            for level, policy in sorted(batching.priority_queue_policy.items())
        },
    )


def _check_dynamic_batching(config: model_config_pb2.ModelConfig) -> None:
    """Triton's ValidateModelConfig checks on ``dynamic_batching``, in its order and wording."""
    batching, name = config.dynamic_batching, config.name
    for size in batching.preferred_batch_size:
        if size <= 0:
            raise _invalid(f"dynamic batching preferred size must be positive for {name}")
        if size > config.max_batch_size:
            raise _invalid(f"dynamic batching preferred size must be <= max batch size for {name}")
    levels = batching.priority_levels
    if levels != 0:
        if not 0 < batching.default_priority_level <= levels:
            raise _invalid(f"default priority level must be in range [1, {levels}] for {name}")
        if any(not 0 < level <= levels for level in batching.priority_queue_policy):
            raise _invalid(
                f"priority queue policy must have priority level in range [1, {levels}] for {name}"
            )
    if batching.preserve_ordering:
        if levels > 1:
            raise _invalid(
                f"Only one priority level is allowed when 'preserve_ordering' is true for {name}"
            )
        delay = model_config_pb2.ModelQueuePolicy.TimeoutAction.DELAY
        policies = [batching.default_queue_policy, *batching.priority_queue_policy.values()]
        if any(p.default_timeout_microseconds and p.timeout_action == delay for p in policies):
            raise _invalid(
                "Queue policy can not have DELAY as timeout action when 'preserve_ordering' "
                f"is true for {name}"
            )


def queue_policy(policy: model_config_pb2.ModelQueuePolicy) -> QueuePolicy:
    """One priority level's ``ModelQueuePolicy``, in seconds."""
    action = model_config_pb2.ModelQueuePolicy.TimeoutAction
    return QueuePolicy(
        timeout_action=(
            TimeoutAction.DELAY if policy.timeout_action == action.DELAY else TimeoutAction.REJECT
        ),
        default_timeout_s=policy.default_timeout_microseconds / _MICROSECONDS,
        allow_timeout_override=policy.allow_timeout_override,
        max_queue_size=policy.max_queue_size,
    )


def sequence_policy(config: model_config_pb2.ModelConfig, instances: int) -> SequencePolicy:
    """One model version's ``sequence_batching``, checked with Triton's messages."""
    batching = config.sequence_batching
    strategy = Strategy.OLDEST if batching.HasField("oldest") else Strategy.DIRECT
    idle_us = batching.max_sequence_idle_microseconds
    fields: dict[str, object] = {}
    if strategy is Strategy.OLDEST:
        oldest = batching.oldest
        if oldest.max_candidate_sequences < 1:
            raise _invalid(
                "sequence batching oldest strategy requires max_candidate_sequences >= 1 "
                f"for {config.name}"
            )
        for size in oldest.preferred_batch_size:
            if not 0 < size <= max(1, config.max_batch_size):
                raise _invalid(
                    "sequence batching preferred batch size must be positive and <= max "
                    f"batch size for {config.name}"
                )
        fields.update(
            max_candidate_sequences=oldest.max_candidate_sequences,
            preferred_batch_sizes=tuple(sorted(set(oldest.preferred_batch_size))),
            max_queue_delay_s=oldest.max_queue_delay_microseconds / _MICROSECONDS,
        )
    else:
        direct = batching.direct
        if not 0.0 <= direct.minimum_slot_utilization <= 1.0:
            raise _invalid(
                f"sequence batching minimum slot utilization must be in [0, 1] for {config.name}"
            )
        fields.update(
            max_queue_delay_s=direct.max_queue_delay_microseconds / _MICROSECONDS,
            minimum_slot_utilization=direct.minimum_slot_utilization,
        )
    return SequencePolicy(
        model=config.name,
        max_batch_size=config.max_batch_size,
        instances=max(1, instances),
        strategy=strategy,
        idle_s=idle_us / _MICROSECONDS if idle_us else DEFAULT_IDLE_S,
        controls=_controls(config),
        **fields,  # type: ignore[arg-type]
    )


_FLAG_KINDS = {
    model_config_pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START: ControlKind.START,
    model_config_pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_END: ControlKind.END,
    model_config_pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_READY: ControlKind.READY,
}
_CORRID_TYPES: dict[int, np.dtype] = {
    model_config_pb2.TYPE_UINT64: np.dtype(np.uint64),
    model_config_pb2.TYPE_INT64: np.dtype(np.int64),
    model_config_pb2.TYPE_UINT32: np.dtype(np.uint32),
    model_config_pb2.TYPE_INT32: np.dtype(np.int32),
    model_config_pb2.TYPE_STRING: np.dtype(np.object_),
}


def _controls(config: model_config_pb2.ModelConfig) -> tuple[ControlInput, ...]:
    """Triton's control_input rules: one control per tensor, one tensor per kind."""
    name = config.name
    controls: list[ControlInput] = []
    declared = {tensor.name for tensor in config.input}
    kind_enum = model_config_pb2.ModelSequenceBatching.Control
    for control_input in config.sequence_batching.control_input:
        if len(control_input.control) != 1:
            raise _invalid(
                f"sequence batching control tensor '{control_input.name}' must have exactly "
                f"one control for {name}"
            )
        if control_input.name in declared:
            raise _invalid(
                f"sequence batching control tensor '{control_input.name}' is also a model "
                f"input for {name}: the server fills it in, so leave it out of 'input'"
            )
        control = control_input.control[0]
        if control.kind == kind_enum.CONTROL_SEQUENCE_CORRID:
            corrid_dtype = _CORRID_TYPES.get(control.data_type)
            if corrid_dtype is None:
                raise _invalid(
                    f"sequence batching control tensor '{control_input.name}' of kind "
                    "CONTROL_SEQUENCE_CORRID must be TYPE_UINT64, TYPE_INT64, TYPE_UINT32, "
                    f"TYPE_INT32 or TYPE_STRING for {name}"
                )
            controls.append(ControlInput(control_input.name, ControlKind.CORRID, corrid_dtype))
            continue
        kind = _FLAG_KINDS.get(control.kind)
        if kind is None:
            raise _invalid(
                f"sequence batching control tensor '{control_input.name}' has a control "
                f"kind inferd does not fill in ({kind_enum.Kind.Name(control.kind)}) for {name}"
            )
        pairs: tuple[tuple[np.dtype, list[object]], ...] = (
            (np.dtype(np.int32), list(control.int32_false_true)),
            (np.dtype(np.float32), list(control.fp32_false_true)),
            (np.dtype(np.bool_), list(control.bool_false_true)),
        )
        given = [(dtype, pair) for dtype, pair in pairs if pair]
        if len(given) != 1 or len(given[0][1]) != 2:
            raise _invalid(
                f"sequence batching control tensor '{control_input.name}' must specify exactly "
                "two values in one of int32_false_true, fp32_false_true or bool_false_true "
                f"for {name}"
            )
        dtype, (false_value, true_value) = given[0]
        controls.append(ControlInput(control_input.name, kind, dtype, false_value, true_value))
    kinds = [control.kind for control in controls]
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise _invalid(f"sequence batching specifies multiple {kind.value} tensors for {name}")
    return tuple(controls)
