"""ONNX Runtime backend (platform ``onnxruntime_onnx``, backend ``onnxruntime``).

Each execution instance owns one InferenceSession; ``session.run`` releases the GIL, so
instances on separate threads compute in parallel.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnxruntime as ort

from inferd.engines.backends.base import Backend, BackendInstance, InstanceSpec
from inferd.engines.errors import EngineError, ErrorCode
from inferd.protos import model_config_pb2

logger = logging.getLogger(__name__)

# Triton's --backend-config default-max-batch-size: what auto-complete picks for a model
# whose every input and output has a variable first dimension.
DEFAULT_MAX_BATCH_SIZE = 4

_CONFIG_TYPE_BY_ORT_TYPE = {
    "tensor(bool)": model_config_pb2.TYPE_BOOL,
    "tensor(uint8)": model_config_pb2.TYPE_UINT8,
    "tensor(uint16)": model_config_pb2.TYPE_UINT16,
    "tensor(uint32)": model_config_pb2.TYPE_UINT32,
    "tensor(uint64)": model_config_pb2.TYPE_UINT64,
    "tensor(int8)": model_config_pb2.TYPE_INT8,
    "tensor(int16)": model_config_pb2.TYPE_INT16,
    "tensor(int32)": model_config_pb2.TYPE_INT32,
    "tensor(int64)": model_config_pb2.TYPE_INT64,
    "tensor(float16)": model_config_pb2.TYPE_FP16,
    "tensor(float)": model_config_pb2.TYPE_FP32,
    "tensor(double)": model_config_pb2.TYPE_FP64,
    "tensor(bfloat16)": model_config_pb2.TYPE_BF16,
    "tensor(string)": model_config_pb2.TYPE_STRING,
}


def _default_intra_op_threads(config: model_config_pb2.ModelConfig) -> int:
    """The cores this process may use, shared among the model's instances.

    ONNX Runtime's own default (0) starts a thread per physical core for every session,
    pins them and spins between runs: with several instances per model that
    oversubscribes the cores, and the pinning escapes `taskset`/cgroup limits. Measured
    with bench/serving_overhead.py on cnn_classifier: 396 -> 673 requests/s at
    concurrency 1, p99 9.7 -> 1.7 ms (docs/benchmarks.md).
    """
    instances = sum(max(group.count, 1) for group in config.instance_group) or 1
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # macOS has no affinity API
        cores = os.cpu_count() or 1
    return max(1, cores // instances)


def _session_options(config: model_config_pb2.ModelConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = _default_intra_op_threads(config)
    # Instance threads share the cores: a pool spinning between runs takes them from others.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Parameter names follow Triton's onnxruntime backend so existing configs carry over.
    for parameter, attribute in (
        ("intra_op_thread_count", "intra_op_num_threads"),
        ("inter_op_thread_count", "inter_op_num_threads"),
    ):
        if parameter in config.parameters:
            value = config.parameters[parameter].string_value
            try:
                setattr(options, attribute, int(value))
            except ValueError:
                raise EngineError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"model '{config.name}': parameter '{parameter}' must be an integer, "
                    f"got '{value}'",
                ) from None
    return options


def _dims(shape: Sequence[object]) -> list[int]:
    # ORT reports symbolic or unknown dimensions as strings or None.
    return [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape]


class OnnxRuntimeBackend(Backend):
    name: ClassVar[str] = "onnxruntime"
    platforms: ClassVar[tuple[str, ...]] = ("onnxruntime_onnx",)
    default_model_filename: ClassVar[str] = "model.onnx"

    def complete_config(self, model_path: Path, config: model_config_pb2.ModelConfig) -> None:
        """Triton's onnxruntime auto-complete, then a check of the config against the graph.

        Auto-complete runs only when the config lacks inputs or outputs. A model whose
        every input and output has a variable first dimension can batch; one left at
        max_batch_size 0 then gets Triton's default of 4.
        """
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        model_inputs = {node.name: node for node in session.get_inputs()}
        model_outputs = {node.name: node for node in session.get_outputs()}
        config.platform = config.platform or self.platforms[0]
        config.backend = config.backend or self.name

        if not config.input or not config.output:
            first_dims = [
                _dims(node.shape)[:1] for node in (*model_inputs.values(), *model_outputs.values())
            ]
            can_batch = all(dims == [-1] for dims in first_dims)
            if can_batch and config.max_batch_size == 0:
                config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
                logger.warning(
                    "autofilled max_batch_size to %d for model '%s' since batching is "
                    "supported but no max_batch_size is specified in model configuration",
                    DEFAULT_MAX_BATCH_SIZE,
                    config.name,
                )
            if (
                can_batch
                and config.max_batch_size > 1
                and not config.HasField("dynamic_batching")
                and not config.HasField("sequence_batching")
            ):
                config.dynamic_batching.SetInParent()  # Triton batches what it can batch
            if not can_batch and config.max_batch_size != 0:
                raise EngineError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"autofill failed for model '{config.name}': model does not support "
                    "batching while non-zero max_batch_size is specified",
                )
        batched = config.max_batch_size > 0
        batching = config.sequence_batching
        for state in batching.state:
            for kind, state_name, found in (
                ("input", state.input_name, model_inputs),
                ("output", state.output_name, model_outputs),
            ):
                node = found.get(state_name)
                if node is None:
                    raise EngineError(
                        ErrorCode.INVALID_ARGUMENT,
                        f"unable to load model '{config.name}': sequence batching state "
                        f"{kind} '{state_name}' is not an {kind} of the ONNX model ({kind}s "
                        f"{sorted(found)})",
                    )
                if self._config_type(config.name, node) != state.data_type:
                    raise EngineError(
                        ErrorCode.INVALID_ARGUMENT,
                        f"unable to load model '{config.name}': sequence batching state "
                        f"{kind} '{state_name}' is {node.type} in the ONNX model but the "
                        "state's data_type is "
                        f"{model_config_pb2.DataType.Name(state.data_type)}",
                    )

        for kind, declared, found in (
            ("input", config.input, model_inputs),
            ("output", config.output, model_outputs),
        ):
            if not declared:
                # Control tensors and implicit state (sequence batching) are the server's
                # to fill and to keep, not the client's inputs and outputs.
                hidden = (
                    {c.name for c in batching.control_input}
                    | {state.input_name for state in batching.state}
                    if kind == "input"
                    else {state.output_name for state in batching.state}
                )
                for node in found.values():
                    if node.name in hidden:
                        continue
                    tensor = declared.add(
                        name=node.name, data_type=self._config_type(config.name, node)
                    )
                    dims = _dims(node.shape)[1:] if batched else _dims(node.shape)
                    tensor.dims.extend(dims or [1])
                    if not dims and batched:
                        tensor.reshape.SetInParent()  # the model takes [batch] alone
                continue
            for tensor in declared:
                node = found.get(tensor.name)
                if node is None:
                    raise EngineError(
                        ErrorCode.INVALID_ARGUMENT,
                        f"unable to load model '{config.name}': configuration expects {kind} "
                        f"'{tensor.name}' but the ONNX model has {kind}s {sorted(found)}",
                    )
                model_type = self._config_type(config.name, node)
                if tensor.data_type != model_type:
                    raise EngineError(
                        ErrorCode.INVALID_ARGUMENT,
                        f"unable to load model '{config.name}': configuration expects datatype "
                        f"{model_config_pb2.DataType.Name(tensor.data_type)} for {kind} "
                        f"'{tensor.name}', model provides "
                        f"{model_config_pb2.DataType.Name(model_type)}",
                    )
                self._check_dims(config, kind, tensor, _dims(node.shape))

    @staticmethod
    def _check_dims(
        config: model_config_pb2.ModelConfig,
        kind: str,
        tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput,
        model_dims: list[int],
    ) -> None:
        declared = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        if config.max_batch_size > 0:
            declared = [-1, *declared]
        compatible = len(declared) == len(model_dims) and all(
            want == -1 or have == -1 or want == have
            for want, have in zip(declared, model_dims, strict=True)
        )
        if not compatible:
            batch_note = (
                "the first is the batch dimension"
                if config.max_batch_size > 0
                else "max_batch_size 0: no batch dimension"
            )
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                f"unable to load model '{config.name}': {kind} '{tensor.name}' has shape "
                f"{model_dims} in the ONNX model but the configuration gives {declared} "
                f"({batch_note})",
            )

    @staticmethod
    def _config_type(model: str, node: ort.NodeArg) -> int:
        try:
            return _CONFIG_TYPE_BY_ORT_TYPE[node.type]
        except KeyError:
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                f"unable to load model '{model}': tensor '{node.name}' has type {node.type}, "
                "which inferd cannot serve",
            ) from None

    def load(
        self, model_path: Path, config: model_config_pb2.ModelConfig, instance: InstanceSpec
    ) -> BackendInstance:
        if instance.kind != "CPU":
            raise EngineError(
                ErrorCode.UNSUPPORTED,
                f"model '{config.name}': the onnxruntime backend runs KIND_CPU instances only "
                "in this build (CUDA/TensorRT execution providers are not wired yet)",
            )
        session = ort.InferenceSession(
            str(model_path), _session_options(config), providers=["CPUExecutionProvider"]
        )
        string_outputs = frozenset(
            node.name for node in session.get_outputs() if node.type == "tensor(string)"
        )
        return _OnnxRuntimeInstance(session, string_outputs)


class _OnnxRuntimeInstance(BackendInstance):
    def __init__(self, session: ort.InferenceSession, string_outputs: frozenset[str]) -> None:
        self._session = session
        self._string_outputs = string_outputs
        self._run_options = ort.RunOptions()

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        device_outputs: frozenset[str] = frozenset(),
    ) -> dict[str, np.ndarray]:
        feed: dict[str, np.ndarray] = {}
        text_encoding = "utf-8"
        for name, array in inputs.items():
            if array.dtype == np.object_:
                strings, encoding = _bytes_to_str(array)
                if encoding != "utf-8":
                    text_encoding = encoding
                feed[name] = strings
            else:
                feed[name] = array
        # Fresh options per run: `terminate` cannot be reset once set by cancel().
        self._run_options = ort.RunOptions()
        results = self._session.run(list(output_names), feed, self._run_options)
        outputs = {}
        for name, result in zip(output_names, results, strict=True):
            if name in self._string_outputs:
                result = _str_to_bytes(result, text_encoding)
            outputs[name] = result
        return outputs

    def cancel(self) -> None:
        self._run_options.terminate = True


def _bytes_to_str(array: np.ndarray) -> tuple[np.ndarray, str]:
    """ORT's Python binding takes string tensors as `str` only (it str()-s bytes objects).

    UTF-8 text is decoded as such, so text models see the right characters. Bytes that
    are not UTF-8 are carried as latin-1 (one code point per byte), which keeps them
    byte-exact through models that move strings without reading them; the outputs of
    such a request are encoded back as latin-1.
    """
    flat = array.ravel()
    try:
        decoded = [element.decode("utf-8") for element in flat]
        encoding = "utf-8"
    except UnicodeDecodeError:
        decoded = [element.decode("latin-1") for element in flat]
        encoding = "latin-1"
    strings = np.empty(len(decoded), dtype=np.object_)
    strings[:] = decoded
    return strings.reshape(array.shape), encoding


def _str_to_bytes(array: np.ndarray, encoding: str) -> np.ndarray:
    flat = array.ravel()
    encoded = np.empty(len(flat), dtype=np.object_)
    for index, element in enumerate(flat):
        text = element if isinstance(element, str) else str(element)
        try:
            encoded[index] = text.encode(encoding)
        except UnicodeEncodeError:
            encoded[index] = text.encode("utf-8")
    return encoded.reshape(array.shape)
