"""Packing requests into one execution and splitting outputs back, as pure numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferd.engines.execution.packing import gather, scatter, signature


def _request(marker: int, rows: int, width: int = 3) -> dict[str, np.ndarray]:
    """Every element of every input carries the request's marker, so mixing shows."""
    return {
        "INPUT0": np.full((rows, width), marker, np.float32),
        "INPUT1": np.full((rows, 2, 2), marker, np.int64),
    }


# gather


def test_gather_of_one_request_passes_its_arrays_through() -> None:
    request = _request(7, rows=2)
    gathered = gather([request])
    assert gathered.keys() == request.keys()
    for name, array in request.items():
        assert gathered[name] is array  # no copy for the common unbatched case


def test_gather_stacks_rows_in_request_order() -> None:
    gathered = gather([_request(1, rows=2), _request(2, rows=1), _request(3, rows=3)])
    assert gathered["INPUT0"].shape == (6, 3)
    assert gathered["INPUT1"].shape == (6, 2, 2)
    assert gathered["INPUT0"].dtype == np.float32 and gathered["INPUT1"].dtype == np.int64
    assert gathered["INPUT0"][:, 0].tolist() == [1, 1, 2, 3, 3, 3]
    assert gathered["INPUT1"][:, 1, 1].tolist() == [1, 1, 2, 3, 3, 3]


def test_gather_keeps_bytes_elements() -> None:
    first = {"TEXT": np.array([[b"a"], [b"bc"]], dtype=np.object_)}
    second = {"TEXT": np.array([[b"\xff\x00"]], dtype=np.object_)}
    gathered = gather([first, second])
    assert gathered["TEXT"].dtype == np.object_
    assert gathered["TEXT"][:, 0].tolist() == [b"a", b"bc", b"\xff\x00"]


# scatter


def test_scatter_gives_each_request_exactly_its_rows() -> None:
    rows = [2, 1, 3]
    outputs: dict[str, np.ndarray] = {
        "OUTPUT0": np.repeat(np.array([10, 20, 30], np.float32), rows)[:, None] * np.ones((1, 4)),
        "OUTPUT1": np.repeat(np.array([1, 2, 3], np.int32), rows),
    }
    parts = scatter(outputs, rows)
    assert len(parts) == 3
    for part, count, marker in zip(parts, rows, (10, 20, 30), strict=True):
        assert part.keys() == outputs.keys()
        assert part["OUTPUT0"].shape == (count, 4)
        assert part["OUTPUT1"].shape == (count,)
        assert set(part["OUTPUT0"].ravel().tolist()) == {marker}
        assert set(part["OUTPUT1"].tolist()) == {marker // 10}


def test_scatter_of_one_request_passes_its_outputs_through() -> None:
    # One request owns the whole execution, whatever the model returned.
    outputs = {"OUTPUT0": np.arange(5, dtype=np.float32), "SCALAR": np.array(1.0)}
    (part,) = scatter(outputs, [2])
    assert part["OUTPUT0"] is outputs["OUTPUT0"] and part["SCALAR"] is outputs["SCALAR"]


def test_scatter_refuses_a_model_that_returns_the_wrong_row_count() -> None:
    outputs = {"OUTPUT0": np.zeros((4, 3), np.float32)}
    with pytest.raises(ValueError, match=r"output 'OUTPUT0' has shape \[4, 3\]") as raised:
        scatter(outputs, [2, 3])
    assert "must return 5 rows" in str(raised.value)
    assert "among 2 requests" in str(raised.value)


def test_scatter_refuses_too_many_rows_and_scalars() -> None:
    with pytest.raises(ValueError, match="must return 2 rows"):
        scatter({"OUTPUT0": np.zeros((3,), np.float32)}, [1, 1])
    with pytest.raises(ValueError, match=r"output 'S' has shape \[\]"):
        scatter({"OUTPUT0": np.zeros((2,), np.float32), "S": np.array(0.0)}, [1, 1])


def test_scatter_checks_every_output_not_only_the_first() -> None:
    outputs = {"A": np.zeros((3, 1)), "B": np.zeros((2, 1))}
    with pytest.raises(ValueError, match="output 'B'"):
        scatter(outputs, [1, 2])


@given(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=8))
def test_rows_never_mix_through_gather_then_scatter(rows: list[int]) -> None:
    requests = [_request(marker, count) for marker, count in enumerate(rows)]
    gathered = gather(requests)
    # An identity model: outputs are the inputs.
    parts = scatter(gathered, rows)
    assert len(parts) == len(requests)
    for request, part in zip(requests, parts, strict=True):
        for name, array in request.items():
            assert part[name].shape == array.shape
            assert np.array_equal(part[name], array)


# signature


def test_an_unbatched_model_has_one_signature() -> None:
    assert signature({"INPUT0": np.zeros((3, 4))}, batched=False) == ()
    assert signature({"INPUT0": np.zeros((5,))}, batched=False) == ()


def test_signature_ignores_the_batch_dimension_and_input_order() -> None:
    one = {"A": np.zeros((1, 4)), "B": np.zeros((1, 2, 2))}
    many = {"B": np.zeros((7, 2, 2)), "A": np.zeros((7, 4))}
    assert signature(one, batched=True) == signature(many, batched=True)


def test_different_non_batch_shapes_have_different_signatures() -> None:
    four = signature({"A": np.zeros((1, 4))}, batched=True)
    three = signature({"A": np.zeros((1, 3))}, batched=True)
    four_by_one = signature({"A": np.zeros((1, 4, 1))}, batched=True)
    assert len({four, three, four_by_one}) == 3


def test_different_input_sets_have_different_signatures() -> None:
    # An optional input present in one request and absent in another: never merged.
    with_optional = signature({"A": np.zeros((1, 4)), "OPT": np.zeros((1, 1))}, batched=True)
    without = signature({"A": np.zeros((1, 4))}, batched=True)
    renamed = signature({"B": np.zeros((1, 4))}, batched=True)
    assert len({with_optional, without, renamed}) == 3


def test_signatures_are_hashable() -> None:
    key = signature({"A": np.zeros((2, 4)), "B": np.zeros((2,))}, batched=True)
    assert {key: 1}[key] == 1
