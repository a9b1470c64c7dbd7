"""The bundled demo model repository, built from code so that nothing is downloaded.

It holds Triton's classic example models (same names, tensors and semantics, so Triton's
own clients and examples work against inferd unchanged) plus one small real network for
benchmarks, laid out as Triton expects: ``<repo>/<model>/config.pbtxt`` and
``<repo>/<model>/1/model.onnx``. Each model is declared once, as a ``DemoModel``; both
its config and its ONNX graph signature are derived from that declaration.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["DEMO_REPOSITORY_VERSION", "build_demo_repository", "cached_demo_repository"]

# Bump whenever any model or config below changes: cached repositories live in a directory
# named after it, so a stale cache is never served.
DEMO_REPOSITORY_VERSION = 3

# Opset 17 and IR version 8 load in every onnxruntime >= 1.17 (inferd's floor).
_OPSET = 17
_IR_VERSION = 8

# The batch dimension the config leaves implicit (max_batch_size > 0) is this symbolic
# leading dimension in the ONNX graph; a config dim of -1 becomes another symbolic one.
_BATCH_DIM = "batch"

_ONNX_TYPES: dict[str, int] = {
    "TYPE_INT8": TensorProto.INT8,
    "TYPE_INT32": TensorProto.INT32,
    "TYPE_UINT64": TensorProto.UINT64,
    "TYPE_FP32": TensorProto.FLOAT,
    "TYPE_STRING": TensorProto.STRING,
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as the config declares it (dims exclude the batch dimension)."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    def config_text(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        return (
            f'  {{\n    name: "{self.name}"\n    data_type: {self.data_type}\n'
            f"    dims: [ {dims} ]\n  }}"
        )

    def value_info(self) -> onnx.ValueInfoProto:
        shape: list[str | int] = [_BATCH_DIM]
        shape += [f"{self.name}_dim{i}" if d == -1 else d for i, d in enumerate(self.dims)]
        return helper.make_tensor_value_info(self.name, _ONNX_TYPES[self.data_type], shape)


@dataclass(frozen=True, slots=True)
class GraphBody:
    """The nodes between a model's declared inputs and outputs, and the weights they use."""

    nodes: list[onnx.NodeProto]
    initializers: list[TensorProto]


@dataclass(frozen=True, slots=True)
class DemoModel:
    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    body: Callable[[], GraphBody]
    # Graph inputs the server fills in (sequence batching's control tensors): in the
    # graph, not in the config's `input`; `extra_config` declares them.
    controls: tuple[TensorSpec, ...] = ()
    extra_config: str = ""

    def config_text(self) -> str:
        def tensors(specs: tuple[TensorSpec, ...]) -> str:
            return ",\n".join(spec.config_text() for spec in specs)

        return (
            f'name: "{self.name}"\n'
            'platform: "onnxruntime_onnx"\n'
            f"max_batch_size: {self.max_batch_size}\n"
            f"input [\n{tensors(self.inputs)}\n]\n"
            f"output [\n{tensors(self.outputs)}\n]\n"
            f"{self.extra_config}"
        )

    def onnx_bytes(self) -> bytes:
        body = self.body()
        graph = helper.make_graph(
            body.nodes,
            self.name,
            [spec.value_info() for spec in (*self.inputs, *self.controls)],
            [spec.value_info() for spec in self.outputs],
            initializer=body.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_operatorsetid("", _OPSET)],
            ir_version=_IR_VERSION,
            producer_name="inferd",
        )
        # Deterministic serialization keeps the bytes identical from build to build.
        return model.SerializeToString(deterministic=True)


def _sum_and_difference() -> GraphBody:
    return GraphBody(
        nodes=[
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        initializers=[],
    )


def _string_sum_and_difference() -> GraphBody:
    # Elements are decimal integers as strings; onnxruntime's string <-> int32 Cast parses
    # and prints them in plain decimal ("3", "-1").
    int32, string = TensorProto.INT32, TensorProto.STRING
    return GraphBody(
        nodes=[
            helper.make_node("Cast", ["INPUT0"], ["input0_int"], to=int32),
            helper.make_node("Cast", ["INPUT1"], ["input1_int"], to=int32),
            helper.make_node("Add", ["input0_int", "input1_int"], ["sum_int"]),
            helper.make_node("Sub", ["input0_int", "input1_int"], ["difference_int"]),
            helper.make_node("Cast", ["sum_int"], ["OUTPUT0"], to=string),
            helper.make_node("Cast", ["difference_int"], ["OUTPUT1"], to=string),
        ],
        initializers=[],
    )


def _identity() -> GraphBody:
    return GraphBody(nodes=[helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], initializers=[])


# A small VGG-style image classifier for benchmarks: about 430k parameters and 1 ms of
# single-threaded onnxruntime CPU time per image, so batching and concurrency show up in
# throughput. Its weights are random; only their cost matters.
_CNN_SEED = 20240601
_CNN_IMAGE: tuple[int, int, int] = (3, 32, 32)  # channels, height, width
# The output channels of each stage's 3x3 convolutions (each followed by ReLU); every stage
# ends in a 2x2 max pool, so 32x32 images shrink to 4x4 before the dense layers.
_CNN_STAGES: tuple[tuple[int, ...], ...] = ((64, 64, 64), (128,), (128,))
_CNN_HIDDEN = 64
_CNN_CLASSES = 10


def _cnn_classifier() -> GraphBody:
    # RandomState, not default_rng: its streams are frozen across numpy releases, so the
    # weights, and with them the model.onnx bytes, are the same on every install.
    rng = np.random.RandomState(_CNN_SEED)

    def weight(name: str, shape: tuple[int, ...], fan_in: int) -> TensorProto:
        values = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)  # He initialisation
        return numpy_helper.from_array(values.astype(np.float32), name)

    def bias(name: str, size: int) -> TensorProto:
        return numpy_helper.from_array(np.zeros(size, np.float32), name)

    nodes: list[onnx.NodeProto] = []
    initializers: list[TensorProto] = []
    previous, channels = "INPUT", _CNN_IMAGE[0]
    for s, stage in enumerate(_CNN_STAGES):
        for c, out_channels in enumerate(stage):
            conv = f"conv{s}_{c}"
            initializers += [
                weight(f"{conv}_w", (out_channels, channels, 3, 3), channels * 9),
                bias(f"{conv}_b", out_channels),
            ]
            nodes += [
                helper.make_node(
                    "Conv", [previous, f"{conv}_w", f"{conv}_b"], [conv], pads=[1, 1, 1, 1]
                ),
                helper.make_node("Relu", [conv], [f"{conv}_relu"]),
            ]
            previous, channels = f"{conv}_relu", out_channels
        nodes.append(
            helper.make_node(
                "MaxPool", [previous], [f"pool{s}"], kernel_shape=[2, 2], strides=[2, 2]
            )
        )
        previous = f"pool{s}"

    side = _CNN_IMAGE[1] >> len(_CNN_STAGES)
    features = channels * side * side
    initializers += [
        weight("fc0_w", (features, _CNN_HIDDEN), features),
        bias("fc0_b", _CNN_HIDDEN),
        weight("fc1_w", (_CNN_HIDDEN, _CNN_CLASSES), _CNN_HIDDEN),
        bias("fc1_b", _CNN_CLASSES),
    ]
    nodes += [
        helper.make_node("Flatten", [previous], ["features"]),
        helper.make_node("Gemm", ["features", "fc0_w", "fc0_b"], ["fc0"]),
        helper.make_node("Relu", ["fc0"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "fc1_w", "fc1_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["OUTPUT"], axis=-1),
    ]
    return GraphBody(nodes=nodes, initializers=initializers)


def _simple_sequence() -> GraphBody:
    # OUTPUT = (INPUT + START) * READY
    return GraphBody(
        nodes=[
            helper.make_node("Add", ["INPUT", "START"], ["started"]),
            helper.make_node("Mul", ["started", "READY"], ["OUTPUT"]),
        ],
        initializers=[],
    )


def _simple_dyna_sequence() -> GraphBody:
    # OUTPUT = (INPUT + START + END * CORRID) * READY, CORRID cast from uint64 to int32
    return GraphBody(
        nodes=[
            helper.make_node("Cast", ["CORRID"], ["corrid_int"], to=TensorProto.INT32),
            helper.make_node("Mul", ["END", "corrid_int"], ["end_corrid"]),
            helper.make_node("Add", ["INPUT", "START"], ["started"]),
            helper.make_node("Add", ["started", "end_corrid"], ["summed"]),
            helper.make_node("Mul", ["summed", "READY"], ["OUTPUT"]),
        ],
        initializers=[],
    )


def _flag_control(name: str, kind: str) -> str:
    return f'    {{ name: "{name}" control [ {{ kind: {kind} int32_false_true: [ 0, 1 ] }} ] }}'


_SIMPLE_SEQUENCE_CONFIG = (
    "sequence_batching {\n"
    "  direct { }\n"
    "  control_input [\n"
    + ",\n".join(
        [
            _flag_control("START", "CONTROL_SEQUENCE_START"),
            _flag_control("READY", "CONTROL_SEQUENCE_READY"),
        ]
    )
    + "\n  ]\n}\n"
)

_SIMPLE_DYNA_SEQUENCE_CONFIG = (
    "sequence_batching {\n"
    "  max_sequence_idle_microseconds: 10000000\n"
    "  oldest { max_candidate_sequences: 1024 max_queue_delay_microseconds: 10000 }\n"
    "  control_input [\n"
    + ",\n".join(
        [
            _flag_control("START", "CONTROL_SEQUENCE_START"),
            _flag_control("END", "CONTROL_SEQUENCE_END"),
            _flag_control("READY", "CONTROL_SEQUENCE_READY"),
            '    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID '
            "data_type: TYPE_UINT64 } ] }",
        ]
    )
    + "\n  ]\n}\n"
    "instance_group [ { kind: KIND_CPU count: 2 } ]\n"
)


def _pair(data_type: str, dims: tuple[int, ...], prefix: str) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(f"{prefix}{i}", data_type, dims) for i in range(2))


DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel(
        "simple",
        8,
        _pair("TYPE_INT32", (16,), "INPUT"),
        _pair("TYPE_INT32", (16,), "OUTPUT"),
        _sum_and_difference,
    ),
    DemoModel(
        "simple_int8",
        8,
        _pair("TYPE_INT8", (16,), "INPUT"),
        _pair("TYPE_INT8", (16,), "OUTPUT"),
        _sum_and_difference,
    ),
    DemoModel(
        "simple_string",
        8,
        _pair("TYPE_STRING", (16,), "INPUT"),
        _pair("TYPE_STRING", (16,), "OUTPUT"),
        _string_sum_and_difference,
    ),
    DemoModel(
        "simple_identity",
        8,
        (TensorSpec("INPUT0", "TYPE_STRING", (-1,)),),
        (TensorSpec("OUTPUT0", "TYPE_STRING", (-1,)),),
        _identity,
    ),
    DemoModel(
        "identity_fp32",
        64,
        (TensorSpec("INPUT0", "TYPE_FP32", (-1,)),),
        (TensorSpec("OUTPUT0", "TYPE_FP32", (-1,)),),
        _identity,
    ),
    DemoModel(
        "cnn_classifier",
        64,
        (TensorSpec("INPUT", "TYPE_FP32", _CNN_IMAGE),),
        (TensorSpec("OUTPUT", "TYPE_FP32", (_CNN_CLASSES,)),),
        _cnn_classifier,
    ),
    DemoModel(
        "simple_sequence",
        8,
        (TensorSpec("INPUT", "TYPE_INT32", (1,)),),
        (TensorSpec("OUTPUT", "TYPE_INT32", (1,)),),
        _simple_sequence,
        controls=(TensorSpec("START", "TYPE_INT32", (1,)), TensorSpec("READY", "TYPE_INT32", (1,))),
        extra_config=_SIMPLE_SEQUENCE_CONFIG,
    ),
    DemoModel(
        "simple_dyna_sequence",
        8,
        (TensorSpec("INPUT", "TYPE_INT32", (1,)),),
        (TensorSpec("OUTPUT", "TYPE_INT32", (1,)),),
        _simple_dyna_sequence,
        controls=(
            TensorSpec("START", "TYPE_INT32", (1,)),
            TensorSpec("END", "TYPE_INT32", (1,)),
            TensorSpec("READY", "TYPE_INT32", (1,)),
            TensorSpec("CORRID", "TYPE_UINT64", (1,)),
        ),
        extra_config=_SIMPLE_DYNA_SEQUENCE_CONFIG,
    ),
)


# Python-backend demo models ship as files (config.pbtxt, 1/model.py) beside this module.
_PYTHON_MODELS_DIR = Path(__file__).parent / "models"
PYTHON_DEMO_MODELS = ("repeat_int32", "simple_string_dyna_sequence")


def _write_models(root: Path) -> None:
    for model in DEMO_MODELS:
        version_dir = root / model.name / "1"
        version_dir.mkdir(parents=True)
        (root / model.name / "config.pbtxt").write_text(model.config_text(), encoding="utf-8")
        (version_dir / "model.onnx").write_bytes(model.onnx_bytes())
    for name in PYTHON_DEMO_MODELS:
        source = _PYTHON_MODELS_DIR / name
        (root / name / "1").mkdir(parents=True)
        for relative in ("config.pbtxt", "1/model.py"):
            shutil.copyfile(source / relative, root / name / relative)


def build_demo_repository(destination: Path) -> Path:
    """Write every demo model into ``destination``, which must be absent or empty.

    The models are written into a temporary sibling directory that is renamed into place
    at the end, so ``destination`` never holds a half-written repository.
    """
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise ValueError(
            f"cannot build the demo repository into {destination}: it exists and is not an "
            "empty directory; pass a new or empty directory"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0o700 mode would survive the rename and hide the
    # repository from other users (a Triton container, say); mkdir honours the umask.
    staging = destination.parent / f".{destination.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    try:
        _write_models(staging)
        # POSIX rename replaces an empty directory but Windows' does not; removing it
        # first works on both.
        if destination.exists():
            destination.rmdir()
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def _cache_root() -> Path:
    # Empty variables count as unset, as the XDG base directory spec asks.
    if explicit := os.environ.get("INFERD_CACHE_DIR"):
        return Path(explicit)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "inferd"
    return Path.home() / ".cache" / "inferd"


def _is_built(path: Path) -> bool:
    # Repositories only appear by rename of a complete build, so any non-empty one is whole.
    return path.is_dir() and any(path.iterdir())


def cached_demo_repository() -> Path:
    """The demo repository in the user's cache directory, built on first use.

    Safe when several processes ask at once: each builds privately and renames into place;
    a process whose rename loses the race uses the winner's identical repository.
    """
    target = _cache_root() / f"demo-repository-v{DEMO_REPOSITORY_VERSION}"
    if _is_built(target):
        return target
    try:
        return build_demo_repository(target)
    except (OSError, ValueError):
        if _is_built(target):
            return target
        raise
