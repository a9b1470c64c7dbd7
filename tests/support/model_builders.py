"""ONNX models for the tests, built with onnx's helper API into a Triton-layout repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Every protocol datatype and the ONNX element type that carries it.
DATATYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def config_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def _write(repository: Path, name: str, config: str | None, graphs: dict[int, onnx.GraphProto]):
    model_dir = repository / name
    model_dir.mkdir(parents=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    for version, graph in graphs.items():
        _save(graph, model_dir / str(version) / "model.onnx")


def _identity_graph(element_type: int, batch: bool = True) -> onnx.GraphProto:
    shape = ["batch", "n"] if batch else ["n"]
    return helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", element_type, shape)],
        [helper.make_tensor_value_info("OUTPUT0", element_type, shape)],
    )


def _identity_config(name: str, datatype: str) -> str:
    return f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: {config_type(datatype)} dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: {config_type(datatype)} dims: [ -1 ] }} ]
"""


def _add_constant_graph(value: int) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "K"], ["OUTPUT0"])],
        "add_constant",
        [helper.make_tensor_value_info("INPUT0", TensorProto.INT32, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.INT32, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.array(value, dtype=np.int32), "K")],
    )


def _slow_graph() -> onnx.GraphProto:
    """OUTPUT0 = INPUT0 after ITERATIONS rounds of a 256x256 matrix product: a model whose
    running time the test chooses, for requests that must still be in flight."""
    size = 256
    weights = (np.eye(size) * 0.5 + 0.5 / size).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["state_in", "W"], ["product"]),
            helper.make_node("Identity", ["condition_in"], ["condition_out"]),
            helper.make_node("Identity", ["product"], ["state_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [size, size]),
        ],
        [
            helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [size, size]),
        ],
    )
    nodes = [
        helper.make_node("Reshape", ["ITERATIONS", "scalar_shape"], ["trip_count"]),
        helper.make_node("Loop", ["trip_count", "", "seed"], ["final"], body=body),
        # OUTPUT0 = INPUT0 + 0 * sum(final): the loop's result feeds the output, so no
        # runtime can prune the loop away.
        helper.make_node("ReduceSum", ["final"], ["checksum"], keepdims=0),
        helper.make_node("Mul", ["checksum", "zero"], ["zeroed"]),
        helper.make_node("Add", ["INPUT0", "zeroed"], ["OUTPUT0"]),
    ]
    return helper.make_graph(
        nodes,
        "slow",
        [
            helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("ITERATIONS", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [1])],
        initializer=[
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(np.ones((size, size), np.float32), "seed"),
            numpy_helper.from_array(np.array([], dtype=np.int64), "scalar_shape"),
            numpy_helper.from_array(np.array(0, dtype=np.float32), "zero"),
        ],
    )


def build_test_repository(root: Path) -> Path:
    for datatype, element_type in DATATYPES.items():
        name = f"identity_{datatype.lower()}"
        _write(root, name, _identity_config(name, datatype), {1: _identity_graph(element_type)})

    # No config.pbtxt at all: everything comes from the graph, as Triton's auto-complete does.
    _write(root, "autocomplete", None, {1: _add_constant_graph(0)})

    versions = {version: _add_constant_graph(version) for version in (1, 2, 3)}
    _write(root, "versioned_latest", "max_batch_size: 4", versions)
    _write(root, "versioned_all", "max_batch_size: 4\nversion_policy { all { } }", versions)
    _write(
        root,
        "versioned_specific",
        "max_batch_size: 4\nversion_policy { specific { versions: [1, 3] } }",
        versions,
    )

    _write(
        root,
        "unbatched",
        """
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
""",
        {1: _identity_graph(TensorProto.FLOAT, batch=False)},
    )
    _write(
        root,
        "slow",
        """
max_batch_size: 0
instance_group [ { kind: KIND_CPU count: 1 } ]
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] },
        { name: "ITERATIONS" data_type: TYPE_INT64 dims: [ 1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
""",
        {1: _slow_graph()},
    )

    # Broken models: each must be reported with its reason while the others serve.
    _write(
        root,
        "broken_config",
        "max_batch_size: [this is not protobuf text",
        {1: _identity_graph(TensorProto.FLOAT)},
    )
    broken_file = root / "broken_onnx" / "1" / "model.onnx"
    broken_file.parent.mkdir(parents=True)
    broken_file.write_bytes(b"definitely not an onnx model")
    (root / "broken_onnx" / "config.pbtxt").write_text(_identity_config("broken_onnx", "FP32"))
    _write(
        root,
        "broken_mismatch",
        _identity_config("broken_mismatch", "INT32"),
        {1: _identity_graph(TensorProto.FLOAT)},
    )
    return root


# --- dynamic batching -------------------------------------------------------------------

BATCHING_WIDTH = 4  # INPUT0's one non-batch dimension in the batching repository


def _affine_graph() -> onnx.GraphProto:
    """OUTPUT0 = 2 * INPUT0 + 1 element-wise and OUTPUT1 = each row's sum: rows that
    got mixed up between requests show in either output."""
    return helper.make_graph(
        [
            helper.make_node("Mul", ["INPUT0", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "one"], ["OUTPUT0"]),
            helper.make_node("ReduceSum", ["INPUT0", "axes"], ["OUTPUT1"], keepdims=1),
        ],
        "affine",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", BATCHING_WIDTH])],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", BATCHING_WIDTH]),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, ["batch", 1]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(2, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array(1, dtype=np.float32), "one"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )


def _affine_config(name: str, max_batch_size: int, batching: str | None) -> str:
    config = f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {BATCHING_WIDTH} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {BATCHING_WIDTH} ] }},
         {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 1 ] }} ]
"""
    if batching is not None:
        config += f"dynamic_batching {{ {batching} }}\n"
    return config


# Each model runs on one instance, so one held request holds the model.
BATCHING_MODELS: dict[str, tuple[int, str | None]] = {
    # The reference: same graph, no dynamic batching.
    "affine_plain": (8, None),
    # A long delay, so requests sent together run together.
    "affine_batched": (8, "max_queue_delay_microseconds: 200000"),
    # Queue timeouts that a request's own `timeout` may shorten.
    "affine_timeout": (
        8,
        "default_queue_policy { timeout_action: REJECT "
        "default_timeout_microseconds: 60000000 allow_timeout_override: true }",
    ),
    "affine_deadline": (8, ""),
    "affine_limited": (8, "default_queue_policy { max_queue_size: 2 }"),
    "affine_counted": (8, "default_queue_policy { max_queue_size: 3 }"),
    "affine_burst": (8, "default_queue_policy { max_queue_size: 8 }"),
    # One request per execution, so the order of executions is the scheduling order.
    "affine_priority": (1, "priority_levels: 2 default_priority_level: 2"),
}


def build_batching_repository(root: Path) -> Path:
    """One FP32 [4] graph under several ``dynamic_batching`` configurations."""
    for name, (max_batch_size, batching) in BATCHING_MODELS.items():
        _write(root, name, _affine_config(name, max_batch_size, batching), {1: _affine_graph()})
    return root
