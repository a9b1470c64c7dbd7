"""config.pbtxt parsing, validation and version policies, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from inferd.engines import EngineError
from inferd.engines.repository.config import read_config, select_versions, validate_config
from inferd.protos import model_config_pb2


def _config(text: str, name: str = "m") -> model_config_pb2.ModelConfig:
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    config.name = config.name or name
    return config


def test_missing_config_gives_an_empty_one_named_after_the_directory(tmp_path: Path) -> None:
    model_dir = tmp_path / "resnet"
    model_dir.mkdir()
    assert read_config(model_dir) == model_config_pb2.ModelConfig(name="resnet")


def test_parse_error_names_the_file(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.pbtxt").write_text("max_batch_size: lots")
    with pytest.raises(EngineError, match=r"failed to parse .*m/config\.pbtxt"):
        read_config(model_dir)


def test_name_must_match_the_directory(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.pbtxt").write_text('name: "other"')
    with pytest.raises(EngineError, match=r"'other' .* does not match its directory name 'm'"):
        read_config(model_dir)


def test_triton_configs_with_every_section_parse(tmp_path: Path) -> None:
    model_dir = tmp_path / "full"
    model_dir.mkdir()
    (model_dir / "config.pbtxt").write_text(
        """
name: "full"
backend: "onnxruntime"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, -1 ] reshape: { shape: [ 3, 1, -1 ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1000 }
}
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
model_warmup [ { name: "w" batch_size: 1 inputs { key: "x" value: {
  data_type: TYPE_FP32 dims: [ 3, 4 ] zero_data: true } } } ]
"""
    )
    config = read_config(model_dir)
    assert config.dynamic_batching.preferred_batch_size == [4, 8]
    validate_config(config)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("max_batch_size: -1", "max_batch_size must be >= 0"),
        ('output [ { name: "y" data_type: TYPE_FP32 dims: [1] } ]', "declares no inputs"),
        ('input [ { name: "x" data_type: TYPE_FP32 dims: [1] } ]', "declares no outputs"),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [0] } ] '
            'output [ { name: "y" data_type: TYPE_FP32 dims: [1] } ]',
            "dimension must be integer >= 1, or -1",
        ),
        (
            'input [ { name: "x" dims: [1] } ] '
            'output [ { name: "y" data_type: TYPE_FP32 dims: [1] } ]',
            "input 'x' has no data_type",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [1] }, '
            '{ name: "x" data_type: TYPE_FP32 dims: [1] } ] '
            'output [ { name: "y" data_type: TYPE_FP32 dims: [1] } ]',
            "input 'x' is declared twice",
        ),
    ],
)
def test_invalid_configs_name_the_model_and_field(text: str, complaint: str) -> None:
    with pytest.raises(EngineError, match=complaint) as caught:
        validate_config(_config(text))
    assert "invalid config for model 'm'" in caught.value.message


def test_version_policies() -> None:
    available = [1, 2, 5]
    assert select_versions(_config(""), available) == [5]
    assert select_versions(_config("version_policy { latest { num_versions: 2 } }"), available) == [
        2,
        5,
    ]
    assert select_versions(_config("version_policy { all { } }"), available) == [1, 2, 5]
    specific = _config("version_policy { specific { versions: [5, 1] } }")
    assert select_versions(specific, available) == [1, 5]
    with pytest.raises(EngineError, match=r"asks for version\(s\) \[3\]"):
        select_versions(_config("version_policy { specific { versions: [3] } }"), available)
