"""PyTorch backend (backend ``pytorch``, platform ``pytorch_libtorch`` as in Triton).

Each execution instance owns one copy of the module on its device and, on a GPU, one
CUDA stream. A batch is staged in the instance's pinned host buffers, copied to the
device without blocking, computed, and copied back into fresh pinned memory, all on
that stream; the instance thread then waits on one CUDA event, never on the device as
a whole, so instances on one GPU overlap and the event loop never waits on the GPU.
Inputs a client left in CUDA shared memory arrive as device tensors: a request alone
in its batch is read in place, and a batch with such rows is stacked on the device.

Options are model ``parameters`` (strings), plus Triton's
``optimization { cuda { graphs: true } }``:

- ``dtype``: ``fp32`` (default: the weights as saved), ``fp16`` or ``bf16``; floating
  inputs are cast on the device, outputs are cast to the config's data types;
- ``torch_compile``: a ``torch.compile`` mode (``default``, ``reduce-overhead``,
  ``max-autotune``), compiled and warmed up at load; ``torch_compile_backend`` picks the
  compiler (default ``inductor``);
- ``pipeline_devices`` (``cuda:0,cuda:1``), ``pipeline_split_points`` (child names),
  ``pipeline_micro_batches``: pipeline sharding, see ``pipeline.py``;
- ``factory``: the function of ``model.py`` that builds the module.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import numpy as np
import torch

from inferd.engines.backends.base import Backend, BackendInstance, InstanceSpec
from inferd.engines.backends.cuda_graphs import CudaGraphSet, default_buckets
from inferd.engines.backends.pipeline import (
    Pipeline,
    PipelineError,
    balanced_starts,
    named_starts,
    parameter_bytes,
    sequential_children,
)
from inferd.engines.backends.torch_modules import (
    DEFAULT_FACTORY,
    FORMATS,
    CallingConvention,
    load_module,
)
from inferd.engines.errors import EngineError, ErrorCode
from inferd.protos import model_config_pb2
from inferd.protos.datatypes import config_type_to_datatype, datatype_of

logger = logging.getLogger(__name__)

# What an instance calls: the module, its pipeline stages, or what torch.compile made.
Runner: TypeAlias = "torch.nn.Module | Pipeline | Callable[..., Any]"

MODEL_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# torch imports parts of itself lazily (torch._dynamo for torch.export and torch.compile)
# and those imports are not safe from several threads at once, which is how the
# repository loads models: instances are built one at a time.
_LOAD_LOCK = threading.Lock()
# Compile modes that capture CUDA graphs of their own: not together with ours.
_GRAPHING_COMPILE_MODES = frozenset({"reduce-overhead", "max-autotune"})


# Protocol datatype -> torch dtype, for every numeric type the protocol carries.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}


def _torch_dtype(config_type: int) -> torch.dtype:
    return TORCH_DTYPES[config_type_to_datatype(model_config_pb2.DataType.Name(config_type))]


@dataclass(frozen=True, slots=True)
class TorchOptions:
    """The backend's settings for one model, read and checked from its config."""

    dtype: torch.dtype | None
    cuda_graphs: bool
    graph_buckets: tuple[int, ...]
    compile_mode: str | None
    compile_backend: str
    pipeline_devices: tuple[torch.device, ...]
    split_points: tuple[str, ...]
    micro_batches: int
    factory: str

    @classmethod
    def from_config(cls, config: model_config_pb2.ModelConfig) -> TorchOptions:
        def parameter(key: str, default: str = "") -> str:
            if key in config.parameters:
                return config.parameters[key].string_value.strip()
            return default

        def bad(detail: str) -> EngineError:
            return EngineError(ErrorCode.INVALID_ARGUMENT, f"model '{config.name}': {detail}")

        dtype_name = parameter("dtype").lower()
        if dtype_name and dtype_name not in MODEL_DTYPES:
            raise bad(
                f"parameter 'dtype' must be one of {sorted(MODEL_DTYPES)}, got '{dtype_name}'"
            )
        cuda = config.optimization.cuda
        buckets = tuple(sorted({spec.batch_size for spec in cuda.graph_spec if spec.batch_size}))
        if cuda.graphs:
            if config.max_batch_size < 1:
                raise bad("CUDA graphs need a batching model (max_batch_size >= 1)")
            too_big = [size for size in buckets if size > config.max_batch_size]
            if too_big:
                raise bad(f"graph_spec batch sizes {too_big} exceed max_batch_size")
            for tensor in config.input:
                dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else tensor.dims
                if any(dim < 0 for dim in dims):
                    raise bad(
                        f"CUDA graphs need fixed input shapes, but input '{tensor.name}' has "
                        f"dims {list(dims)}: fix them or turn graphs off"
                    )
            buckets = buckets or default_buckets(config.max_batch_size)
        compile_mode = parameter("torch_compile") or None
        if cuda.graphs and compile_mode in _GRAPHING_COMPILE_MODES:
            raise bad(
                f"torch_compile mode '{compile_mode}' captures CUDA graphs itself: use it or "
                "optimization.cuda.graphs, not both"
            )
        try:
            devices = tuple(
                torch.device(name.strip())
                for name in parameter("pipeline_devices").split(",")
                if name.strip()
            )
        except RuntimeError as exc:
            raise bad(f"parameter 'pipeline_devices': {exc}") from None
        split_points = tuple(
            name.strip() for name in parameter("pipeline_split_points").split(",") if name.strip()
        )
        if split_points and len(split_points) != len(devices) - 1:
            raise bad(
                f"{len(split_points)} pipeline_split_points make {len(split_points) + 1} "
                f"stages, but pipeline_devices lists {len(devices)} devices"
            )
        if devices and (len(config.input) != 1 or len(config.output) != 1):
            raise bad("pipeline sharding serves models with one input and one output")
        micro_text = parameter("pipeline_micro_batches", str(max(len(devices), 1)))
        if not micro_text.isdigit() or int(micro_text) < 1:
            raise bad(
                f"parameter 'pipeline_micro_batches' must be an integer >= 1, got '{micro_text}'"
            )
        return cls(
            dtype=MODEL_DTYPES[dtype_name] if dtype_name else None,
            cuda_graphs=cuda.graphs,
            graph_buckets=buckets if cuda.graphs else (),
            compile_mode=compile_mode,
            compile_backend=parameter("torch_compile_backend", "inductor"),
            pipeline_devices=devices,
            split_points=split_points,
            micro_batches=int(micro_text),
            factory=parameter("factory", DEFAULT_FACTORY),
        )


class TorchBackend(Backend):
    name: ClassVar[str] = "pytorch"
    platforms: ClassVar[tuple[str, ...]] = ("pytorch_libtorch",)
    default_model_filename: ClassVar[str] = "model.pt"

    def gpu_count(self) -> int:
        return torch.cuda.device_count()

    def complete_config(self, model_path: Path, config: model_config_pb2.ModelConfig) -> None:
        """Triton's PyTorch backend reads no tensor names or shapes from the model: the
        config declares them. This checks what can be checked before loading."""
        config.backend = config.backend or self.name
        config.platform = config.platform or self.platforms[0]
        if not config.input or not config.output:
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                f"model '{config.name}': the pytorch backend needs the config to declare "
                "every input and output (names, data types, dims); a PyTorch model file "
                "does not carry them",
            )
        for kind, tensors in (("input", config.input), ("output", config.output)):
            for tensor in tensors:
                type_name = model_config_pb2.DataType.Name(tensor.data_type)
                if config_type_to_datatype(type_name) not in TORCH_DTYPES:
                    raise EngineError(
                        ErrorCode.INVALID_ARGUMENT,
                        f"model '{config.name}': {kind} '{tensor.name}' is {type_name}; the "
                        f"pytorch backend serves TYPE_{', TYPE_'.join(TORCH_DTYPES)}",
                    )
        for tensor in config.input:
            if tensor.optional:
                raise EngineError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"model '{config.name}': input '{tensor.name}' is optional; the pytorch "
                    "backend passes every input positionally, so none may be left out",
                )
        if model_path.suffix not in FORMATS:
            raise EngineError(
                ErrorCode.INVALID_ARGUMENT,
                f"model '{config.name}': default_model_filename '{model_path.name}' is not a "
                f"format the pytorch backend loads ({', '.join(FORMATS)})",
            )
        TorchOptions.from_config(config)

    def load(
        self, model_path: Path, config: model_config_pb2.ModelConfig, instance: InstanceSpec
    ) -> BackendInstance:
        with _LOAD_LOCK:
            return self._load(model_path, config, instance)

    def _load(
        self, model_path: Path, config: model_config_pb2.ModelConfig, instance: InstanceSpec
    ) -> BackendInstance:
        options = TorchOptions.from_config(config)
        if options.pipeline_devices:
            devices = list(options.pipeline_devices)
        elif instance.kind == "GPU":
            devices = [torch.device("cuda", instance.device or 0)]
        else:
            devices = [torch.device("cpu")]
        for device in devices:
            _check_device(config.name, device)
        module = load_module(model_path, config.name, options.factory, devices[0])
        if options.dtype is not None:
            module = module.to(options.dtype)
        convention = CallingConvention.infer(
            module, [t.name for t in config.input], [t.name for t in config.output]
        )
        runner: Runner = module
        if options.pipeline_devices:
            runner = _pipeline(config.name, module, options)
        if options.compile_mode is not None:
            runner = torch.compile(
                runner, mode=options.compile_mode, backend=options.compile_backend
            )
        return TorchInstance(config, options, runner, convention, devices[0], devices[-1])


def _check_device(model: str, device: torch.device) -> None:
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"model '{model}': device '{device}' is neither cpu nor cuda:<n>",
        )
    available = torch.cuda.device_count()
    if (device.index or 0) >= available:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENT,
            f"model '{model}': asks for GPU {device.index or 0} but torch sees {available} "
            "CUDA device(s) here",
        )


def _pipeline(model: str, module: torch.nn.Module, options: TorchOptions) -> Pipeline:
    try:
        children = sequential_children(module)
        names = [name for name, _ in children]
        if options.split_points:
            starts = named_starts(names, options.split_points)
        else:
            sizes = [parameter_bytes(child) for _, child in children]
            starts = balanced_starts(sizes, len(options.pipeline_devices))
    except PipelineError as exc:
        raise EngineError(ErrorCode.INVALID_ARGUMENT, f"model '{model}': {exc}") from None
    logger.info(
        "model '%s': pipeline stages start at children %s on %s, %d micro-batches",
        model,
        [names[index] for index in starts],
        ", ".join(map(str, options.pipeline_devices)),
        options.micro_batches,
    )
    return Pipeline(
        [child for _, child in children],
        starts,
        options.pipeline_devices,
        options.micro_batches,
    )


class _PinnedStaging:
    """One pinned host buffer per input, reused batch after batch.

    Bounded: one buffer per input per instance, grown to the largest batch seen (sized
    for max_batch_size up front when the dims are fixed). Reuse is safe because an
    instance waits for its batch's event, which follows the upload on the stream,
    before it stages the next batch.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def reserve(self, name: str, nbytes: int) -> None:
        if name not in self._buffers or self._buffers[name].numel() < nbytes:
            self._buffers[name] = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def host_array(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The input's buffer as an array of ``shape``, to write a batch into."""
        nbytes = int(np.prod(shape)) * dtype.itemsize
        self.reserve(name, nbytes)
        return self._buffers[name][:nbytes].numpy().view(dtype).reshape(shape)

    def stage(self, name: str, array: np.ndarray) -> torch.Tensor:
        """The input in pinned memory, copied there unless ``gather`` put it there."""
        buffer = self._buffers.get(name)
        if buffer is None or array.ctypes.data != buffer.data_ptr():
            np.copyto(self.host_array(name, array.shape, array.dtype), array, casting="no")
        host = self._buffers[name][: array.nbytes]
        return host.view(TORCH_DTYPES[datatype_of(array)]).view(array.shape)


class TorchInstance(BackendInstance):
    """One module on its device (or one pipeline across several), with its stream."""

    def __init__(
        self,
        config: model_config_pb2.ModelConfig,
        options: TorchOptions,
        runner: Runner,
        convention: CallingConvention,
        input_device: torch.device,
        output_device: torch.device,
    ) -> None:
        self._model = config.name
        self._runner = runner
        self._convention = convention
        self._input_device = input_device
        self._output_device = output_device
        self._model_dtype = options.dtype
        self._output_dtypes = {t.name: _torch_dtype(t.data_type) for t in config.output}
        on_gpu = input_device.type == "cuda"
        self.takes_device_tensors = on_gpu
        self._stream = torch.cuda.Stream(input_device) if on_gpu else None
        self._staging = _PinnedStaging() if on_gpu else None
        # Recorded after the download to the host, on the stream that does it (a
        # pipeline's last stage may be on another device than the upload).
        self._done = torch.cuda.Event() if output_device.type == "cuda" else None
        self._graphs: CudaGraphSet | None = None
        row_shapes = _fixed_row_shapes(config, convention)
        if self._staging is not None and row_shapes is not None:
            batch = max(config.max_batch_size, 1)
            for tensor in config.input:
                shape = row_shapes[convention.argument_order.index(tensor.name)]
                itemsize = _torch_dtype(tensor.data_type).itemsize
                self._staging.reserve(tensor.name, batch * int(np.prod(shape)) * itemsize)
        with torch.inference_mode():
            if options.compile_mode is not None and row_shapes is not None:
                self._warm_up_compiled(config, row_shapes)
            if options.cuda_graphs:
                if self._stream is None:
                    raise EngineError(
                        ErrorCode.INVALID_ARGUMENT,
                        f"model '{config.name}': CUDA graphs run on KIND_GPU instances only",
                    )
                assert row_shapes is not None  # TorchOptions checked the dims are fixed
                self._graphs = CudaGraphSet(
                    self._forward,
                    row_shapes,
                    [self._input_dtype(t.data_type) for t in self._ordered_inputs(config)],
                    options.graph_buckets,
                    input_device,
                    self._stream,
                )

    def _ordered_inputs(
        self, config: model_config_pb2.ModelConfig
    ) -> list[model_config_pb2.ModelInput]:
        by_name = {tensor.name: tensor for tensor in config.input}
        return [by_name[name] for name in self._convention.argument_order]

    def _input_dtype(self, config_type: int) -> torch.dtype:
        dtype = _torch_dtype(config_type)
        if self._model_dtype is not None and dtype.is_floating_point:
            return self._model_dtype
        return dtype

    def _warm_up_compiled(
        self, config: model_config_pb2.ModelConfig, row_shapes: list[tuple[int, ...]]
    ) -> None:
        """Compile now, at the batch sizes that matter most, not on a client's request."""
        sizes = sorted({1, max(config.max_batch_size, 1)}) if config.max_batch_size else [0]
        for rows in sizes:
            prefix = (rows,) if rows else ()
            tensors = [
                torch.zeros(prefix + shape, dtype=self._input_dtype(t.data_type),
                            device=self._input_device)
                for shape, t in zip(row_shapes, self._ordered_inputs(config), strict=True)
            ]  # fmt: skip
            with self._on_stream():
                self._forward(tensors)
        if self._stream is not None:
            self._stream.synchronize()

    def _on_stream(self) -> contextlib.AbstractContextManager[object]:
        return (
            torch.cuda.stream(self._stream)
            if self._stream is not None
            else contextlib.nullcontext()
        )

    def _forward(self, arguments: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        results = self._convention.results(self._model, self._runner(*arguments))
        return [results[name] for name in self._convention.result_order]

    def _upload(self, name: str, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(array, torch.Tensor):  # in a client's GPU memory: no host copy
            tensor = array.to(self._input_device, non_blocking=True)
        elif self._staging is not None:
            tensor = self._staging.stage(name, np.ascontiguousarray(array))
            tensor = tensor.to(self._input_device, non_blocking=True)
        else:
            # torch refuses to wrap read-only memory (a request's bytes): copy those.
            tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
            tensor = tensor.to(self._input_device)
        if self._model_dtype is not None and tensor.dtype.is_floating_point:
            tensor = tensor.to(self._model_dtype)
        return tensor

    def _on_device(self, part: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(part, torch.Tensor):
            return part.to(self._input_device, non_blocking=True)
        # torch refuses to wrap read-only memory (a request's bytes): copy those.
        host = torch.from_numpy(part if part.flags.writeable else part.copy())
        return host.to(self._input_device)

    def gather(self, requests: Sequence[Mapping[str, np.ndarray]]) -> Mapping[str, np.ndarray]:
        if self._staging is None or len(requests) == 1:
            return super().gather(requests)
        batch: dict[str, np.ndarray] = {}
        for name, first in requests[0].items():
            parts = [request[name] for request in requests]
            if any(isinstance(part, torch.Tensor) for part in parts):
                # Some rows are in a client's GPU memory: stack them all on the device.
                with self._on_stream():
                    batch[name] = torch.cat([self._on_device(part) for part in parts])  # type: ignore[assignment]
                continue
            shape = (sum(part.shape[0] for part in parts), *first.shape[1:])
            batch[name] = np.concatenate(
                parts, out=self._staging.host_array(name, shape, first.dtype)
            )
        return batch

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        device_outputs: frozenset[str] = frozenset(),
    ) -> dict[str, np.ndarray]:
        with torch.inference_mode(), self._on_stream():
            tensors = {name: self._upload(name, array) for name, array in inputs.items()}
            arguments = self._convention.arguments(tensors)
            results = self._graphs.run(arguments) if self._graphs is not None else None
            if results is None:
                results = self._forward(arguments)
            by_name = dict(zip(self._convention.result_order, results, strict=True))
            outputs: dict[str, torch.Tensor] = {}
            on_device: dict[str, torch.Tensor] = {}
            for name in output_names:
                if name in device_outputs:
                    # A copy: CUDA graphs' outputs are overwritten by the next replay.
                    on_device[name] = by_name[name].to(self._output_dtypes[name], copy=True)
                    continue
                result = by_name[name].to(self._output_dtypes[name])
                if result.device.type == "cuda":
                    host = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
                    result = host.copy_(result, non_blocking=True)
                outputs[name] = result
            if self._done is not None:
                self._done.record(torch.cuda.current_stream(self._output_device))
        if self._done is not None:
            self._done.synchronize()  # this batch only; releases the GIL while it waits
        answer: dict[str, Any] = {name: tensor.numpy() for name, tensor in outputs.items()}
        answer.update(on_device)  # device tensors, for CUDA shared memory (device_outputs)
        return answer


def _fixed_row_shapes(
    config: model_config_pb2.ModelConfig, convention: CallingConvention
) -> list[tuple[int, ...]] | None:
    """Each input's shape without the batch dimension, in argument order; None if any
    dimension is variable."""
    by_name = {tensor.name: tensor for tensor in config.input}
    shapes = []
    for name in convention.argument_order:
        tensor = by_name[name]
        dims = tuple(tensor.reshape.shape) if tensor.HasField("reshape") else tuple(tensor.dims)
        if any(dim < 0 for dim in dims):
            return None
        shapes.append(dims)
    return shapes
