"""The pytorch backend: every model format through a real server equals the module called
directly; dtype casts; argument mapping; pipeline sharding on ``cpu,cpu`` equals the
unsharded model; CUDA-graph bucketing as pure logic; load failures with clear reasons.

GPU paths (streams, CUDA graphs, pipelines across CUDA devices) run only where torch
sees a GPU; CI has none, and ``bench/gpu_torch.py`` runs them on a lent GPU machine.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from inferd.clients import Client, InternalError, RepositoryModel
from inferd.engines.backends.cuda_graphs import bucket_for, default_buckets, fill_padded, trim
from inferd.engines.backends.pipeline import PipelineError, balanced_starts, named_starts
from inferd.engines.backends.torch_modules import CallingConvention
from inferd.engines.errors import EngineError
from tests.support.server_process import ServerProcess
from tests.support.torch_model_builders import (
    CLASSES,
    MAX_BATCH,
    WIDTH,
    mlp,
    mlp_config,
    write_add_sub,
    write_exported,
    write_python,
    write_torchscript,
)

CUDA = torch.cuda.is_available()
NEEDS_GPU = pytest.mark.skipif(
    not CUDA,
    reason="needs a CUDA GPU (streams, CUDA graphs, device pipelines); CI has none: "
    "bench/gpu_torch.py runs these on a lent GPU machine",
)

PIPELINE_NAMED = """
parameters [
  { key: "pipeline_devices" value: { string_value: "cpu,cpu,cpu" } },
  { key: "pipeline_split_points" value: { string_value: "2,4" } },
  { key: "pipeline_micro_batches" value: { string_value: "3" } }
]
"""
PIPELINE_BALANCED = """
parameters { key: "pipeline_devices" value: { string_value: "cpu,cpu" } }
"""
FAILING_SOURCE = textwrap.dedent(
    """
    import torch


    class RefusesNegatives(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 4)

        def forward(self, x):
            if bool((x < 0).any()):
                raise ValueError("this model refuses negative inputs")
            return self.linear(x)


    def create_model():
        return RefusesNegatives()
    """
)


# Answers with the number of times it ran before, so the first request shows the warm-up.
COUNTER_SOURCE = textwrap.dedent(
    """
    import torch


    class Counter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            answer = torch.full((x.shape[0], 4), float(self.calls))
            self.calls += 1
            return answer


    def create_model():
        return Counter()
    """
)
WARMUP = """
model_warmup [{
  name: "zeros" batch_size: 2 count: 3
  inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 8 ] zero_data: true } }
}]
"""


def _dtype_config(dtype: str) -> str:
    return f'parameters {{ key: "dtype" value: {{ string_value: "{dtype}" }} }}'


# Models that must fail to load, and words their UNAVAILABLE reason must contain.
BROKEN: dict[str, str] = {
    "broken_file": "cannot load model.pt as a TorchScript",
    "graphs_on_cpu": "CUDA graphs run on KIND_GPU instances only",
    "graphs_variable_dims": "CUDA graphs need fixed input shapes, but input 'INPUT0' has dims [-1]",
    "no_factory": "model.py defines no callable 'create_model'",
    "weights_mismatch": "model.safetensors does not match the module that model.py builds",
    "undeclared_tensors": "the pytorch backend needs the config to declare every input and output",
    "bad_dtype": "parameter 'dtype' must be one of ['bf16', 'fp16', 'fp32'], got 'fp8'",
    "pipeline_not_sequential": "pipeline sharding needs a model that runs its top-level children",
    "pipeline_unknown_split": "split point 'nope' is not a top-level child of the model",
    "string_tensor": "input 'INPUT0' is TYPE_STRING; the pytorch backend serves",
}
if not CUDA:
    BROKEN["gpu_instance"] = "asks for GPU(s) of any kind, but its backend sees 0 GPU(s) here"


def _build_broken(repository: Path) -> None:
    version_dir = repository / "broken_file" / "1"
    version_dir.mkdir(parents=True)
    (repository / "broken_file" / "config.pbtxt").write_text(mlp_config("broken_file", "model.pt"))
    (version_dir / "model.pt").write_bytes(b"not a TorchScript archive")
    write_python(
        repository,
        "graphs_on_cpu",
        "optimization { cuda { graphs: true } }",
    )
    config = mlp_config("graphs_variable_dims", "model.py").replace(
        f"dims: [ {WIDTH} ]", "dims: [ -1 ]"
    )
    version_dir = repository / "graphs_variable_dims" / "1"
    version_dir.mkdir(parents=True)
    (repository / "graphs_variable_dims" / "config.pbtxt").write_text(
        config + "optimization { cuda { graphs: true } }\n"
    )
    (version_dir / "model.py").write_text("")
    write_python(repository, "no_factory", source="import torch\n", weights=False)
    write_python(repository, "weights_mismatch", source=FAILING_SOURCE.replace("8, 4", "8, 3"))
    version_dir = repository / "undeclared_tensors" / "1"
    version_dir.mkdir(parents=True)
    (repository / "undeclared_tensors" / "config.pbtxt").write_text(
        'backend: "pytorch"\nmax_batch_size: 4\n'
    )
    write_torchscript(repository, "bad_dtype", _dtype_config("fp8"))
    write_python(
        repository,
        "pipeline_not_sequential",
        PIPELINE_BALANCED,
        source=FAILING_SOURCE,
        weights=False,
    )
    write_python(repository, "pipeline_unknown_split", PIPELINE_NAMED.replace('"2,4"', '"2,nope"'))
    write_python(repository, "string_tensor")
    config_path = repository / "string_tensor" / "config.pbtxt"
    config_path.write_text(
        config_path.read_text().replace(
            "data_type: TYPE_FP32 dims: [ 8 ]", "data_type: TYPE_STRING dims: [ 8 ]"
        )
    )
    if not CUDA:
        write_python(repository, "gpu_instance")
        config_path = repository / "gpu_instance" / "config.pbtxt"
        config_path.write_text(config_path.read_text().replace("KIND_CPU", "KIND_GPU"))


@pytest.fixture(scope="module")
def torch_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    repository = tmp_path_factory.mktemp("torch-repository")
    modules = {
        "mlp_script": write_torchscript(repository, "mlp_script"),
        "mlp_export": write_exported(repository, "mlp_export"),
        "mlp_python": write_python(repository, "mlp_python"),
        "mlp_fp16": write_python(repository, "mlp_fp16", _dtype_config("fp16")),
        "mlp_bf16": write_python(repository, "mlp_bf16", _dtype_config("bf16")),
        "mlp_pipeline_named": write_python(repository, "mlp_pipeline_named", PIPELINE_NAMED),
        "mlp_pipeline_balanced": write_python(
            repository, "mlp_pipeline_balanced", PIPELINE_BALANCED
        ),
        "mlp_compiled": write_python(
            repository,
            "mlp_compiled",
            """
            parameters [
              { key: "torch_compile" value: { string_value: "default" } },
              { key: "torch_compile_backend" value: { string_value: "eager" } }
            ]
            """,
        ),
        "add_sub": write_add_sub(repository, "add_sub"),
        "refuses_negatives": write_python(
            repository, "refuses_negatives", source=FAILING_SOURCE, weights=False
        ),
        "counter_warmed": write_python(
            repository, "counter_warmed", WARMUP, source=COUNTER_SOURCE, weights=False
        ),
    }
    if CUDA:
        gpu = "instance_group [ { kind: KIND_GPU count: 2 } ]"
        for name, extra in {
            "gpu_eager": "",
            "gpu_graphs": "optimization { cuda { graphs: true } }",
            "gpu_fp16_graphs": "optimization { cuda { graphs: true } }\n" + _dtype_config("fp16"),
            "gpu_pipeline": PIPELINE_NAMED.replace("cpu", "cuda:0"),
        }.items():
            modules[name] = write_python(repository, name, extra)
            config_path = repository / name / "config.pbtxt"
            text = config_path.read_text().replace(
                "instance_group [ { kind: KIND_CPU count: 1 } ]", gpu
            )
            config_path.write_text(text)
    _build_broken(repository)
    return repository, modules


@pytest.fixture(scope="module")
def torch_server(torch_repository: tuple[Path, dict]) -> Iterator[ServerProcess]:
    server = ServerProcess(torch_repository[0]).wait_ready(timeout=120)
    yield server
    server.kill()


@pytest.fixture(scope="module")
def client(torch_server: ServerProcess) -> Iterator[Client]:
    with Client(torch_server.address, timeout=60) as connected:
        yield connected


def _rows(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, WIDTH)).astype(np.float32)


def _expected(module: torch.nn.Module, rows: np.ndarray, dtype: torch.dtype | None = None):
    with torch.inference_mode():
        if dtype is None:
            return module(torch.from_numpy(rows)).numpy()
        return module.to(dtype)(torch.from_numpy(rows).to(dtype)).float().numpy()


@pytest.mark.parametrize(
    "model",
    ["mlp_script", "mlp_export", "mlp_python", "mlp_compiled"],
)
def test_each_format_answers_like_the_module(
    client: Client, torch_repository: tuple[Path, dict], model: str
) -> None:
    rows = _rows(5)
    answer = client.infer(model, {"INPUT0": rows})["OUTPUT0"]
    assert answer.dtype == np.float32 and answer.shape == (5, CLASSES)
    np.testing.assert_allclose(
        answer, _expected(torch_repository[1][model], rows), rtol=1e-5, atol=1e-6
    )


def test_concurrent_requests_batch_and_each_gets_its_rows(
    client: Client, torch_repository: tuple[Path, dict]
) -> None:
    module = torch_repository[1]["mlp_script"]
    requests = [_rows(1 + index % 3, seed=index) for index in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda rows: client.infer("mlp_script", {"INPUT0": rows}), requests)
        )
    for rows, answer in zip(requests, answers, strict=True):
        np.testing.assert_allclose(answer["OUTPUT0"], _expected(module, rows), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("model", "dtype"), [("mlp_fp16", torch.float16), ("mlp_bf16", torch.bfloat16)]
)
def test_reduced_precision_casts_at_the_boundary(
    client: Client, torch_repository: tuple[Path, dict], model: str, dtype: torch.dtype
) -> None:
    rows = _rows(4)
    answer = client.infer(model, {"INPUT0": rows})["OUTPUT0"]
    assert answer.dtype == np.float32  # the config's type, whatever the model computes in
    reference = _expected(mlp(), rows, dtype)
    np.testing.assert_allclose(answer, reference, rtol=2e-2, atol=2e-2)
    assert not np.array_equal(answer, _expected(mlp(), rows))  # it did compute in reduced precision


def test_inputs_by_argument_name_and_outputs_by_index_suffix(client: Client) -> None:
    left = np.array([[1, 2, 3], [10, 20, 30]], dtype=np.int32)
    right = np.array([[1, 1, 1], [5, 5, 5]], dtype=np.int32)
    answer = client.infer("add_sub", {"left": left, "right": right})
    np.testing.assert_array_equal(answer["SUM__0"], left + right)
    np.testing.assert_array_equal(answer["DIFF__1"], left - right)


@pytest.mark.parametrize("model", ["mlp_pipeline_named", "mlp_pipeline_balanced"])
def test_pipeline_on_cpu_stages_answers_like_the_unsharded_model(
    client: Client, torch_repository: tuple[Path, dict], model: str
) -> None:
    rows = _rows(7)  # 7 rows in 3 micro-batches: uneven chunks
    answer = client.infer(model, {"INPUT0": rows})["OUTPUT0"]
    np.testing.assert_allclose(answer, _expected(mlp(), rows), rtol=1e-5, atol=1e-6)


def test_model_error_fails_that_request_only(client: Client) -> None:
    with pytest.raises(InternalError, match="refuses negative inputs"):
        client.infer("refuses_negatives", {"INPUT0": -np.ones((1, WIDTH), np.float32)})
    answer = client.infer("refuses_negatives", {"INPUT0": np.ones((2, WIDTH), np.float32)})
    assert answer["OUTPUT0"].shape == (2, CLASSES)


def test_model_warmup_runs_before_the_model_serves(client: Client) -> None:
    answer = client.infer("counter_warmed", {"INPUT0": np.ones((1, WIDTH), np.float32)})
    assert answer["OUTPUT0"].tolist() == [[3.0] * 4]  # three warm-up runs came first


def test_broken_models_are_unavailable_with_the_reason(client: Client) -> None:
    index = {entry.name: entry for entry in client.repository_index()}
    for name, words in BROKEN.items():
        entry: RepositoryModel = index[name]
        assert entry.state == "UNAVAILABLE", name
        assert words in entry.reason, (name, entry.reason)
    assert index["mlp_script"].state == "READY"


# --- GPU paths ---------------------------------------------------------------------


@NEEDS_GPU
@pytest.mark.parametrize("model", ["gpu_eager", "gpu_graphs", "gpu_pipeline"])
def test_gpu_models_answer_like_the_module_at_every_batch_size(
    client: Client, torch_repository: tuple[Path, dict], model: str
) -> None:
    module = torch_repository[1][model]
    for rows in range(1, MAX_BATCH + 1):  # bucketed sizes and the ones padded up to a bucket
        batch = _rows(rows, seed=rows)
        answer = client.infer(model, {"INPUT0": batch})["OUTPUT0"]
        np.testing.assert_allclose(answer, _expected(module, batch), rtol=1e-3, atol=1e-4)


@NEEDS_GPU
def test_gpu_fp16_graphs(client: Client) -> None:
    rows = _rows(3)
    answer = client.infer("gpu_fp16_graphs", {"INPUT0": rows})["OUTPUT0"]
    np.testing.assert_allclose(answer, _expected(mlp(), rows, torch.float16), rtol=2e-2, atol=2e-2)


@NEEDS_GPU
def test_gpu_instances_serve_concurrently(
    client: Client, torch_repository: tuple[Path, dict]
) -> None:
    module = torch_repository[1]["gpu_graphs"]
    requests = [_rows(1 + index % MAX_BATCH, seed=index) for index in range(64)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda rows: client.infer("gpu_graphs", {"INPUT0": rows}), requests)
        )
    for rows, answer in zip(requests, answers, strict=True):
        np.testing.assert_allclose(answer["OUTPUT0"], _expected(module, rows), rtol=1e-3, atol=1e-4)


# --- pure logic ------------------------------------------------------------------


def test_without_torch_the_backend_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from inferd.engines.backends import get_backend

    monkeypatch.setitem(sys.modules, "torch", None)  # what an install without torch sees
    monkeypatch.delitem(sys.modules, "inferd.engines.backends.pytorch", raising=False)
    with pytest.raises(EngineError, match=r"needs a package that is not installed \(torch\): "
                       r"pip install 'inferd\[torch\]'"):  # fmt: skip
        get_backend("pytorch")


def test_default_buckets_are_powers_of_two_and_the_maximum() -> None:
    assert default_buckets(1) == (1,)
    assert default_buckets(8) == (1, 2, 4, 8)
    assert default_buckets(12) == (1, 2, 4, 8, 12)
    assert default_buckets(0) == ()


def test_bucket_for_picks_the_smallest_that_holds_the_rows() -> None:
    buckets = (1, 2, 4, 8, 12)
    assert [bucket_for(rows, buckets) for rows in (1, 2, 3, 5, 8, 9, 12, 13)] == [
        1, 2, 4, 8, 8, 12, 12, None,
    ]  # fmt: skip


def test_fill_padded_zeroes_the_padding_and_trim_returns_the_rows() -> None:
    static = torch.full((4, 2), 7.0)  # what an earlier batch left behind
    fill_padded(static, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert static.tolist() == [[1, 2], [3, 4], [0, 0], [0, 0]]
    (trimmed,) = trim([static * 10], 2)
    assert trimmed.tolist() == [[10, 20], [30, 40]]


def test_balanced_starts_minimise_the_heaviest_stage() -> None:
    assert balanced_starts([1, 1, 1, 1], 2) == [0, 2]
    assert balanced_starts([8, 1, 1, 1, 1], 2) == [0, 1]
    assert balanced_starts([1, 1, 1, 8], 2) == [0, 3]
    assert balanced_starts([0, 5, 0, 5, 0], 2) == [0, 3]
    assert balanced_starts([3, 3, 3], 3) == [0, 1, 2]  # every stage gets a child
    with pytest.raises(PipelineError):
        balanced_starts([1, 1], 3)


def test_named_starts_follow_model_order() -> None:
    names = ["0", "1", "2", "3"]
    assert named_starts(names, ["2"]) == [0, 2]
    with pytest.raises(PipelineError, match="in model order"):
        named_starts(names, ["3", "1"])
    with pytest.raises(PipelineError, match="not a top-level child"):
        named_starts(names, ["9"])


def test_calling_convention_names_what_a_module_returned_wrong() -> None:
    convention = CallingConvention(("x",), ("A", "B"))
    assert set(convention.results("m", {"A": torch.zeros(1), "B": torch.ones(1)})) == {"A", "B"}
    with pytest.raises(EngineError, match=r"returned 1 result\(s\) .* declares 2 output\(s\)"):
        convention.results("m", torch.zeros(1))
    with pytest.raises(EngineError, match=r"without output\(s\) \['B'\]"):
        convention.results("m", {"A": torch.zeros(1)})
