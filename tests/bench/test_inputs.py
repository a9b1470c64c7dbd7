"""Building one request's inputs from model metadata, random or from files; no server."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from inferd.bench.inputs import build_inputs, parse_shape
from inferd.clients import ModelMetadata, TensorMetadata


def _model(name: str, *inputs: tuple[str, str, tuple[int, ...]]) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        versions=("1",),
        platform="onnxruntime_onnx",
        inputs=tuple(TensorMetadata(n, datatype, shape) for n, datatype, shape in inputs),
        outputs=(TensorMetadata("OUTPUT0", "FP32", (-1,)),),
    )


SIMPLE = _model("simple", ("INPUT0", "INT32", (-1, 16)), ("INPUT1", "INT32", (-1, 16)))
SIMPLE_STRING = _model(
    "simple_string", ("INPUT0", "BYTES", (-1, 16)), ("INPUT1", "BYTES", (-1, 16))
)
IMAGE = _model("image", ("IMAGE", "FP32", (-1, 3, -1, -1)))
FIXED = _model("fixed", ("X", "FP16", (2, 3)))


# parse_shape.


def test_parse_shape() -> None:
    assert parse_shape("INPUT0:1,2,3") == ("INPUT0", [1, 2, 3])
    assert parse_shape("x:7") == ("x", [7])


@pytest.mark.parametrize("text", ["INPUT0", "INPUT0:", ":1,2", "INPUT0:1,a", "INPUT0:1,-1"])
def test_parse_shape_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="--shape"):
        parse_shape(text)


# Random data.


def test_random_inputs_take_batch_size_for_the_batch_dimension() -> None:
    inputs = build_inputs(SIMPLE, max_batch_size=8, batch_size=4, shapes={}, data=None, seed=0)
    assert list(inputs) == ["INPUT0", "INPUT1"]
    for array in inputs.values():
        assert array.shape == (4, 16)
        assert array.dtype == np.int32
        assert array.min() >= 0
        assert array.max() < 100


def test_random_inputs_are_reproducible_from_the_seed() -> None:
    first = build_inputs(SIMPLE, 8, 2, {}, None, seed=7)
    again = build_inputs(SIMPLE, 8, 2, {}, None, seed=7)
    other = build_inputs(SIMPLE, 8, 2, {}, None, seed=8)
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert not np.array_equal(first["INPUT0"], other["INPUT0"])
    assert not np.array_equal(first["INPUT0"], first["INPUT1"])


def test_random_bytes_are_decimal_numbers() -> None:
    inputs = build_inputs(SIMPLE_STRING, 8, 1, {}, None, seed=0)
    array = inputs["INPUT0"]
    assert array.shape == (1, 16)
    assert array.dtype == np.object_
    for element in array.ravel():
        assert isinstance(element, bytes)
        assert 0 <= int(element) < 100


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [
        ("BOOL", np.bool_),
        ("UINT8", np.uint8),
        ("INT8", np.int8),
        ("UINT64", np.uint64),
        ("INT64", np.int64),
        ("FP16", np.float16),
        ("FP32", np.float32),
        ("FP64", np.float64),
    ],
)
def test_random_inputs_have_the_metadata_datatype(datatype: str, dtype: type) -> None:
    model = _model("m", ("X", datatype, (3, 5)))
    array = build_inputs(model, 0, 1, {}, None, seed=1)["X"]
    assert array.dtype == dtype
    assert array.shape == (3, 5)


def test_shape_fills_variable_dimensions_without_the_batch_dimension() -> None:
    inputs = build_inputs(IMAGE, 16, 2, {"IMAGE": [3, 224, 224]}, None, seed=0)
    assert inputs["IMAGE"].shape == (2, 3, 224, 224)
    assert inputs["IMAGE"].dtype == np.float32


def test_a_model_without_batching_takes_its_shape_whole() -> None:
    assert build_inputs(FIXED, 0, 1, {}, None, seed=0)["X"].shape == (2, 3)
    model = _model("m", ("X", "FP32", (-1, 4)))
    assert build_inputs(model, 0, 1, {"X": [5, 4]}, None, seed=0)["X"].shape == (5, 4)


def test_variable_dimensions_without_a_shape_say_to_pass_one() -> None:
    with pytest.raises(ValueError, match=r"IMAGE.*--shape IMAGE:DIMS"):
        build_inputs(IMAGE, 16, 1, {}, None, seed=0)


def test_a_shape_that_contradicts_the_metadata_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        build_inputs(IMAGE, 16, 1, {"IMAGE": [4, 224, 224]}, None, seed=0)
    with pytest.raises(ValueError, match="without the batch dimension"):
        build_inputs(IMAGE, 16, 1, {"IMAGE": [1, 3, 224, 224]}, None, seed=0)


def test_a_shape_for_an_unknown_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"INPUT9.*INPUT0, INPUT1"):
        build_inputs(SIMPLE, 8, 1, {"INPUT9": [16]}, None, seed=0)


def test_batch_size_must_fit_the_model() -> None:
    with pytest.raises(ValueError, match="max_batch_size 8"):
        build_inputs(SIMPLE, 8, 9, {}, None, seed=0)
    with pytest.raises(ValueError, match="does not batch"):
        build_inputs(FIXED, 0, 2, {}, None, seed=0)
    with pytest.raises(ValueError, match="at least 1"):
        build_inputs(SIMPLE, 8, 0, {}, None, seed=0)


def test_a_batching_model_must_lead_with_the_batch_dimension() -> None:
    with pytest.raises(ValueError, match="batch dimension -1"):
        build_inputs(FIXED, 4, 1, {}, None, seed=0)


def test_an_unsupported_datatype_is_refused() -> None:
    with pytest.raises(ValueError, match="BF16"):
        build_inputs(_model("m", ("X", "BF16", (2,))), 0, 1, {}, None, seed=0)


# Data from .npy files.


def test_a_npy_sample_is_repeated_to_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "image.npy"
    sample = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    np.save(path, sample)
    array = build_inputs(IMAGE, 8, 3, {}, path, seed=0)["IMAGE"]
    assert array.shape == (3, 3, 4, 5)
    assert all(np.array_equal(row, sample) for row in array)


def test_a_npy_whole_batch_is_taken_as_is(tmp_path: Path) -> None:
    path = tmp_path / "image.npy"
    batch = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.save(path, batch)
    assert np.array_equal(build_inputs(IMAGE, 8, 2, {}, path, seed=0)["IMAGE"], batch)


def test_a_npy_file_feeds_only_a_single_input_model(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(16, dtype=np.int32))
    with pytest.raises(ValueError, match=r"single-input model.*directory"):
        build_inputs(SIMPLE, 8, 1, {}, path, seed=0)


def test_a_npy_file_of_the_wrong_dtype_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "image.npy"
    np.save(path, np.zeros((3, 4, 4), dtype=np.float64))
    with pytest.raises(ValueError, match=r"float64.*FP32.*float32"):
        build_inputs(IMAGE, 8, 1, {}, path, seed=0)


def test_a_npy_file_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "image.npy"
    np.save(path, np.zeros((4, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \[4, 4, 4\].*IMAGE"):
        build_inputs(IMAGE, 8, 1, {}, path, seed=0)
    np.save(path, np.zeros((2, 3, 4, 4), dtype=np.float32))  # a batch of 2, asked for 3
    with pytest.raises(ValueError, match="whole batch"):
        build_inputs(IMAGE, 8, 3, {}, path, seed=0)


def test_a_npy_file_must_agree_with_a_given_shape(tmp_path: Path) -> None:
    path = tmp_path / "image.npy"
    np.save(path, np.zeros((3, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="IMAGE"):
        build_inputs(IMAGE, 8, 1, {"IMAGE": [3, 8, 8]}, path, seed=0)


def test_a_directory_holds_one_npy_per_input(tmp_path: Path) -> None:
    np.save(tmp_path / "INPUT0.npy", np.arange(16, dtype=np.int32))
    np.save(tmp_path / "INPUT1.npy", np.ones((2, 16), dtype=np.int32))
    inputs = build_inputs(SIMPLE, 8, 2, {}, tmp_path, seed=0)
    assert inputs["INPUT0"].tolist() == [list(range(16))] * 2
    assert inputs["INPUT1"].tolist() == [[1] * 16] * 2


def test_a_directory_missing_an_input_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "INPUT0.npy", np.arange(16, dtype=np.int32))
    with pytest.raises(ValueError, match=r"no INPUT1\.npy"):
        build_inputs(SIMPLE, 8, 1, {}, tmp_path, seed=0)


def test_a_npy_of_strings_feeds_a_bytes_input(tmp_path: Path) -> None:
    path = tmp_path / "INPUT0.npy"
    np.save(path, np.array([str(i) for i in range(16)]))
    np.save(tmp_path / "INPUT1.npy", np.array([b"1"] * 16))
    inputs = build_inputs(SIMPLE_STRING, 8, 1, {}, tmp_path, seed=0)
    assert inputs["INPUT0"].dtype == np.object_
    assert inputs["INPUT0"][0, 3] == b"3"
    assert inputs["INPUT1"][0, 0] == b"1"


def test_an_unknown_data_file_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,2,3")
    with pytest.raises(ValueError, match=r"\.npy.*\.json.*directory"):
        build_inputs(FIXED, 0, 1, {}, path, seed=0)


# Data from perf_analyzer's JSON.


def _json(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(document))
    return path


def test_json_flat_lists_take_the_metadata_shape(tmp_path: Path) -> None:
    path = _json(
        tmp_path,
        {"data": [{"INPUT0": list(range(16)), "INPUT1": [1] * 16}, {"INPUT0": [9] * 16}]},
    )
    inputs = build_inputs(SIMPLE, 8, 2, {}, path, seed=0)
    assert inputs["INPUT0"].shape == (2, 16)
    assert inputs["INPUT0"].dtype == np.int32
    assert inputs["INPUT0"][1].tolist() == list(range(16))


def test_json_content_with_a_shape_fills_variable_dimensions(tmp_path: Path) -> None:
    content = [0.5] * (3 * 2 * 2)
    path = _json(tmp_path, {"data": [{"IMAGE": {"content": content, "shape": [3, 2, 2]}}]})
    array = build_inputs(IMAGE, 8, 1, {}, path, seed=0)["IMAGE"]
    assert array.shape == (1, 3, 2, 2)
    assert array.dtype == np.float32


def test_json_flat_list_for_variable_dimensions_uses_the_given_shape(tmp_path: Path) -> None:
    path = _json(tmp_path, {"data": [{"IMAGE": [1.0] * 12}]})
    assert build_inputs(IMAGE, 8, 1, {"IMAGE": [3, 2, 2]}, path, 0)["IMAGE"].shape == (1, 3, 2, 2)
    with pytest.raises(ValueError, match="--shape IMAGE:DIMS"):
        build_inputs(IMAGE, 8, 1, {}, path, seed=0)


def test_json_strings_feed_bytes_inputs(tmp_path: Path) -> None:
    entry = {"INPUT0": [str(i) for i in range(16)], "INPUT1": {"content": ["1"] * 16}}
    inputs = build_inputs(SIMPLE_STRING, 8, 1, {}, _json(tmp_path, {"data": [entry]}), seed=0)
    assert inputs["INPUT0"][0, 5] == b"5"
    assert inputs["INPUT1"].shape == (1, 16)


def test_json_b64_content_is_raw_little_endian(tmp_path: Path) -> None:
    raw = np.arange(6, dtype="<f2").tobytes()
    path = _json(tmp_path, {"data": [{"X": {"b64": base64.b64encode(raw).decode()}}]})
    array = build_inputs(FIXED, 0, 1, {}, path, seed=0)["X"]
    assert array.tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"data": [{"INPUT0": [1] * 16}]}, "no data for input INPUT1"),
        ({"data": [{"INPUT0": [1] * 16, "INPUT1": [1] * 16, "INPUT7": [1]}]}, "INPUT7"),
        ({"data": [{"INPUT0": [1] * 15, "INPUT1": [1] * 16}]}, "15 elements"),
        ({"data": [{"INPUT0": ["a"] * 16, "INPUT1": [1] * 16}]}, "not INT32"),
        ({"data": [{"INPUT0": {"content": [1] * 16, "shape": [4]}, "INPUT1": [1] * 16}]}, "16"),
        ({"data": []}, "perf_analyzer input data"),
        ({"inputs": []}, "perf_analyzer input data"),
    ],
)
def test_json_that_does_not_fit_is_refused(tmp_path: Path, document: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_inputs(SIMPLE, 8, 1, {}, _json(tmp_path, document), seed=0)
