from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from inferd.engines.demo import repository as demo_repository
from inferd.engines.demo.repository import build_demo_repository, cached_demo_repository
from inferd.protos import model_config_pb2

# name -> (max_batch_size, inputs, outputs), each tensor as (name, config type, dims).
EXPECTED_CONFIGS = {
    "simple": (
        8,
        [("INPUT0", "TYPE_INT32", [16]), ("INPUT1", "TYPE_INT32", [16])],
        [("OUTPUT0", "TYPE_INT32", [16]), ("OUTPUT1", "TYPE_INT32", [16])],
    ),
    "simple_int8": (
        8,
        [("INPUT0", "TYPE_INT8", [16]), ("INPUT1", "TYPE_INT8", [16])],
        [("OUTPUT0", "TYPE_INT8", [16]), ("OUTPUT1", "TYPE_INT8", [16])],
    ),
    "simple_string": (
        8,
        [("INPUT0", "TYPE_STRING", [16]), ("INPUT1", "TYPE_STRING", [16])],
        [("OUTPUT0", "TYPE_STRING", [16]), ("OUTPUT1", "TYPE_STRING", [16])],
    ),
    "simple_identity": (8, [("INPUT0", "TYPE_STRING", [-1])], [("OUTPUT0", "TYPE_STRING", [-1])]),
    "identity_fp32": (64, [("INPUT0", "TYPE_FP32", [-1])], [("OUTPUT0", "TYPE_FP32", [-1])]),
    "cnn_classifier": (64, [("INPUT", "TYPE_FP32", [3, 32, 32])], [("OUTPUT", "TYPE_FP32", [10])]),
    "simple_sequence": (8, [("INPUT", "TYPE_INT32", [1])], [("OUTPUT", "TYPE_INT32", [1])]),
    "simple_dyna_sequence": (8, [("INPUT", "TYPE_INT32", [1])], [("OUTPUT", "TYPE_INT32", [1])]),
}
PYTHON_MODELS = {"repeat_int32", "simple_string_dyna_sequence"}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_repository(tmp_path_factory.mktemp("demo") / "models")


def session(repository: Path, model: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    path = repository / model / "1" / "model.onnx"
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_layout_is_tritons(repository: Path) -> None:
    python_models = PYTHON_MODELS
    assert sorted(p.name for p in repository.iterdir()) == sorted(
        {*EXPECTED_CONFIGS, *python_models}
    )
    for model in EXPECTED_CONFIGS:
        files = sorted(p.relative_to(repository / model) for p in (repository / model).rglob("*"))
        assert files == [Path("1"), Path("1/model.onnx"), Path("config.pbtxt")]
    for model in python_models:
        files = sorted(p.relative_to(repository / model) for p in (repository / model).rglob("*"))
        assert files == [Path("1"), Path("1/model.py"), Path("config.pbtxt")]
    # The staging directory was renamed into place, not left beside it.
    assert list(repository.parent.iterdir()) == [repository]


@pytest.mark.parametrize("model", sorted(EXPECTED_CONFIGS))
def test_config_parses_as_model_config(repository: Path, model: str) -> None:
    text = (repository / model / "config.pbtxt").read_text(encoding="utf-8")
    config = text_format.Parse(text, model_config_pb2.ModelConfig())

    def tensors(
        specs: Iterable[model_config_pb2.ModelInput | model_config_pb2.ModelOutput],
    ) -> list[tuple[str, str, list[int]]]:
        return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in specs]

    max_batch_size, inputs, outputs = EXPECTED_CONFIGS[model]
    assert config.name == model
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == max_batch_size
    assert tensors(config.input) == inputs
    assert tensors(config.output) == outputs


@pytest.mark.parametrize("model", sorted(EXPECTED_CONFIGS))
def test_onnx_graph_matches_config(repository: Path, model: str) -> None:
    proto = onnx.load(repository / model / "1" / "model.onnx")
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 8
    assert [(op.domain, op.version) for op in proto.opset_import] == [("", 17)]

    _, inputs, outputs = EXPECTED_CONFIGS[model]
    # Sequence control tensors follow the config's inputs: the server fills them in.
    text = (repository / model / "config.pbtxt").read_text(encoding="utf-8")
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    controls = [control.name for control in config.sequence_batching.control_input]
    assert [value.name for value in proto.graph.input[len(inputs) :]] == controls
    for value, (name, _, dims) in zip(proto.graph.input[: len(inputs)], inputs, strict=True):
        shape = value.type.tensor_type.shape.dim
        assert value.name == name
        # A symbolic leading batch dimension, then the config's dims (-1 symbolic too).
        assert shape[0].dim_param
        assert [d.dim_value if d.HasField("dim_value") else -1 for d in shape[1:]] == dims
    assert [o.name for o in proto.graph.output] == [name for name, _, _ in outputs]


@pytest.mark.parametrize(
    ("model", "dtype"), [("simple", np.dtype(np.int32)), ("simple_int8", np.dtype(np.int8))]
)
def test_simple_adds_and_subtracts(repository: Path, model: str, dtype: np.dtype) -> None:
    input0 = np.arange(32, dtype=dtype).reshape(2, 16)
    input1 = np.full((2, 16), 3, dtype=dtype)
    output0, output1 = session(repository, model).run(None, {"INPUT0": input0, "INPUT1": input1})
    assert output0.dtype == dtype and output1.dtype == dtype
    np.testing.assert_array_equal(output0, input0 + input1)
    np.testing.assert_array_equal(output1, input0 - input1)


def test_simple_string_computes_in_decimal_strings(repository: Path) -> None:
    input0 = np.array([[str(i) for i in range(16)]], dtype=object)
    input1 = np.array([["1"] * 16], dtype=object)
    output0, output1 = session(repository, "simple_string").run(
        None, {"INPUT0": input0, "INPUT1": input1}
    )
    assert output0.tolist() == [[str(i + 1) for i in range(16)]]
    assert output1.tolist() == [[str(i - 1) for i in range(16)]]
    assert output1[0, 0] == "-1"


def test_simple_identity_returns_strings_unchanged(repository: Path) -> None:
    strings = np.array([["a\x00b", "", "héllo"], ["x", "y", "z"]], dtype=object)
    (output,) = session(repository, "simple_identity").run(None, {"INPUT0": strings})
    assert output.tolist() == strings.tolist()


def test_identity_fp32_accepts_any_length(repository: Path) -> None:
    identity = session(repository, "identity_fp32")
    for length in (1, 7, 1000):
        values = np.random.default_rng(length).standard_normal((3, length)).astype(np.float32)
        (output,) = identity.run(None, {"INPUT0": values})
        np.testing.assert_array_equal(output, values)


def test_cnn_classifier_outputs_probabilities(repository: Path) -> None:
    images = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    classifier = session(repository, "cnn_classifier")
    (probabilities,) = classifier.run(None, {"INPUT": images})
    assert probabilities.shape == (4, 10)
    assert probabilities.dtype == np.float32
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(classifier.run(None, {"INPUT": images})[0], probabilities)


def test_sequence_models_compute_their_formulas(repository: Path) -> None:
    ones = np.ones((2, 1), np.int32)
    start = np.array([[1], [0]], np.int32)
    inputs = np.array([[5], [6]], np.int32)
    (output,) = session(repository, "simple_sequence").run(
        None, {"INPUT": inputs, "START": start, "READY": ones}
    )
    np.testing.assert_array_equal(output, [[6], [6]])  # (INPUT + START) * READY
    end = np.array([[0], [1]], np.int32)
    corrid = np.array([[7], [1000]], np.uint64)
    (output,) = session(repository, "simple_dyna_sequence").run(
        None, {"INPUT": inputs, "START": start, "END": end, "READY": ones, "CORRID": corrid}
    )
    np.testing.assert_array_equal(output, [[6], [1006]])  # (INPUT + START + END*CORRID) * READY


def test_builds_are_byte_identical(repository: Path, tmp_path: Path) -> None:
    again = build_demo_repository(tmp_path / "again")
    for model in EXPECTED_CONFIGS:
        for file in ("config.pbtxt", "1/model.onnx"):
            assert (again / model / file).read_bytes() == (repository / model / file).read_bytes()


def test_build_into_empty_directory(tmp_path: Path) -> None:
    destination = tmp_path / "empty"
    destination.mkdir()
    assert build_demo_repository(destination) == destination
    assert (destination / "simple" / "config.pbtxt").is_file()


def test_build_refuses_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty directory"):
        build_demo_repository(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def count_builds(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    built: list[Path] = []
    write_models = demo_repository._write_models

    def counting(root: Path) -> None:
        built.append(root)
        write_models(root)

    monkeypatch.setattr(demo_repository, "_write_models", counting)
    return built


def test_cached_repository_is_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERD_CACHE_DIR", str(tmp_path))
    built = count_builds(monkeypatch)
    first = cached_demo_repository()
    assert cached_demo_repository() == first
    assert len(built) == 1
    assert first.parent == tmp_path
    assert str(demo_repository.DEMO_REPOSITORY_VERSION) in first.name
    assert sorted(p.name for p in first.iterdir()) == sorted({*EXPECTED_CONFIGS, *PYTHON_MODELS})


def test_cache_falls_back_to_xdg_cache_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INFERD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cached_demo_repository().parent == tmp_path / "inferd"


def test_cache_uses_the_winner_of_a_build_race(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERD_CACHE_DIR", str(tmp_path))
    write_models = demo_repository._write_models
    target = tmp_path / f"demo-repository-v{demo_repository.DEMO_REPOSITORY_VERSION}"

    def racing(root: Path) -> None:
        # Another process publishes its build while this one is still writing.
        monkeypatch.setattr(demo_repository, "_write_models", write_models)
        build_demo_repository(target)
        (target / "winner").touch()
        write_models(root)

    monkeypatch.setattr(demo_repository, "_write_models", racing)
    assert cached_demo_repository() == target
    assert (target / "winner").exists()
    # The loser's staging directory is gone.
    assert list(tmp_path.iterdir()) == [target]
