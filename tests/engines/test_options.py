"""Request options: Triton's reserved parameters typed once, the rest kept for models."""

from __future__ import annotations

import pytest

from inferd.engines import EngineError, ErrorCode
from inferd.engines.options import DEFAULT_OPTIONS, RequestOptions
from inferd.engines.scheduling.sequence import check_sequence


def test_a_request_without_a_sequence_id_is_refused_in_tritons_words() -> None:
    for parameters in ({}, {"sequence_id": 0}, {"sequence_id": ""}):
        with pytest.raises(EngineError) as caught:
            check_sequence("seq", RequestOptions.from_parameters(parameters).sequence)
        assert caught.value.code is ErrorCode.INVALID_ARGUMENT
        assert caught.value.message == (
            "inference request to model 'seq' must specify a non-zero or non-empty correlation ID"
        )


def test_parameters_give_the_id_and_flags() -> None:
    parsed = RequestOptions.from_parameters({"sequence_id": -1, "sequence_start": True}).sequence
    assert parsed.sequence_id == 2**64 - 1  # int64 on the wire, uint64 in Triton
    assert parsed.start and not parsed.end and parsed.flags == 1
    parsed = RequestOptions.from_parameters({"sequence_id": "abc", "sequence_end": True}).sequence
    assert parsed.sequence_id == "abc" and parsed.flags == 2


def test_reserved_parameters_become_fields_and_the_rest_stays_for_models() -> None:
    options = RequestOptions.from_parameters(
        {
            "priority": 2,
            "timeout": 1500,
            "triton_enable_empty_final_response": True,
            "flavour": "plain",
            "strict": True,
        }
    )
    assert options.priority == 2 and options.timeout_us == 1500
    assert options.empty_final_response and not options.sequence.given
    assert dict(options.parameters) == {"flavour": "plain", "strict": True}


def test_no_parameters_are_the_shared_defaults() -> None:
    assert RequestOptions.from_parameters({}) is DEFAULT_OPTIONS
    assert RequestOptions() == DEFAULT_OPTIONS
