"""A request's options, typed once where a front door decodes the request.

Triton reserves a few request parameters for the server itself (priority, queue timeout,
sequence id and flags, the empty final response); front doors check their wire types
and build ``RequestOptions`` from them, so the engine reads fields, never a dict. Every
other parameter is the client's own, passed to models that read parameters (Python
models' ``request.parameters()``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

ParameterValue = bool | int | float | str

# Request parameters the server consumes itself; models never see them.
PRIORITY = "priority"
TIMEOUT = "timeout"
SEQUENCE_ID = "sequence_id"
SEQUENCE_START = "sequence_start"
SEQUENCE_END = "sequence_end"
EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"
RESERVED_PARAMETERS = frozenset(
    {PRIORITY, TIMEOUT, SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END, EMPTY_FINAL_RESPONSE}
)

# Triton's request flags, as Python models read them from InferenceRequest.flags().
FLAG_SEQUENCE_START = 1
FLAG_SEQUENCE_END = 2
_UINT64 = 1 << 64

SequenceId = int | str

_NO_PARAMETERS: Mapping[str, ParameterValue] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SequenceParameters:
    """Which sequence a request steps, and whether it starts or ends it. An id of 0 or
    "" means the request names no sequence (Triton's "no correlation id")."""

    sequence_id: SequenceId = 0
    start: bool = False
    end: bool = False

    @property
    def given(self) -> bool:
        return self.sequence_id not in (0, "")

    @property
    def flags(self) -> int:
        return (FLAG_SEQUENCE_START if self.start else 0) | (FLAG_SEQUENCE_END if self.end else 0)


NO_SEQUENCE = SequenceParameters()


@dataclass(frozen=True, slots=True)
class RequestOptions:
    priority: int = 0  # 0: the model's default priority level
    timeout_us: int = 0  # the request's own queue timeout (Triton: microseconds); 0: none
    sequence: SequenceParameters = NO_SEQUENCE
    empty_final_response: bool = False  # a decoupled model's bare final flag is sent too
    # The client's own parameters, for models that read them (one shared empty mapping).
    parameters: Mapping[str, ParameterValue] = field(default_factory=lambda: _NO_PARAMETERS)

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, ParameterValue]) -> RequestOptions:
        """Options from request parameters whose values a front door has already checked
        (Triton's value types and ranges); integer sequence ids wrap to uint64 as in
        Triton."""
        if not parameters:
            return DEFAULT_OPTIONS
        sequence_id = parameters.get(SEQUENCE_ID, 0)
        if isinstance(sequence_id, int) and not isinstance(sequence_id, bool):
            sequence_id %= _UINT64
        elif not isinstance(sequence_id, str):
            sequence_id = str(sequence_id)
        own = {key: value for key, value in parameters.items() if key not in RESERVED_PARAMETERS}
        return cls(
            priority=int(parameters.get(PRIORITY, 0)),
            timeout_us=int(parameters.get(TIMEOUT, 0)),
            sequence=SequenceParameters(
                sequence_id,
                parameters.get(SEQUENCE_START) is True,
                parameters.get(SEQUENCE_END) is True,
            ),
            empty_final_response=parameters.get(EMPTY_FINAL_RESPONSE) is True,
            parameters=MappingProxyType(own) if own else _NO_PARAMETERS,
        )


DEFAULT_OPTIONS = RequestOptions()
