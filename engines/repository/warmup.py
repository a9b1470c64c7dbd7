"""Triton's ``model_warmup``: synthetic or file-backed requests that every execution
instance runs before its model version reports ready, so the first real request does
not pay for lazy initialisation (kernel selection, memory arenas, JIT).

Every sample is checked against the config before any runs, and a bad one fails the
version's load with a message naming the model, the sample and the tensor.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from inferd.engines.backends import BackendInstance, BackendRequest, RequestInstance
from inferd.engines.errors import EngineError, ErrorCode
from inferd.engines.execution.sequence_state import SequenceStates, load_states
from inferd.engines.options import DEFAULT_OPTIONS, SequenceParameters
from inferd.engines.repository.policies import sequence_policy
from inferd.engines.scheduling.sequence import control_tensors
from inferd.engines.validation import shape_text
from inferd.protos import model_config_pb2
from inferd.protos.datatypes import NUMPY_DTYPES, config_type_to_datatype, decode_bytes_tensor

logger = logging.getLogger(__name__)

WARMUP_DIRECTORY = "warmup"  # input_data_file is relative to <model_dir>/warmup/
# random_data for TYPE_STRING: ASCII letters rather than arbitrary bytes, because text
# models decode their strings and arbitrary bytes are rarely valid UTF-8.
_RANDOM_STRING_LENGTH = 8
_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class _Sample:
    """One ``model_warmup`` entry made ready to run: the feed every instance gets."""

    label: str  # "'name'", or "#position (unnamed)"
    runs: int  # per instance; the config's count, where 0 means once
    feed: dict[str, np.ndarray]  # shaped as the backend takes them (batch dim, reshape)


class _Blame:
    """Who to blame: the model and sample every error message starts with."""

    def __init__(self, model: str, setting: model_config_pb2.ModelWarmup, position: int) -> None:
        self.label = f"'{setting.name}'" if setting.name else f"#{position} (unnamed)"
        self.prefix = f"model '{model}' warm-up sample {self.label}"

    def fail(self, detail: str, code: ErrorCode = ErrorCode.INVALID_ARGUMENT) -> EngineError:
        return EngineError(code, f"{self.prefix}: {detail}")


def warm_up(
    config: model_config_pb2.ModelConfig,
    model_dir: Path,
    instances: Sequence[BackendInstance | RequestInstance],
) -> None:
    """Run each ``model_warmup`` sample ``count`` times (0: once) on every instance.

    Raises EngineError (INVALID_ARGUMENT for a sample that does not fit the config,
    INTERNAL for a model that fails on it); nothing runs unless every sample is valid.
    """
    samples = [
        _build_sample(config, model_dir, setting, position)
        for position, setting in enumerate(config.model_warmup)
    ]
    samples = [_with_sequence_inputs(config, model_dir, sample) for sample in samples]
    output_names = [output.name for output in config.output]
    for sample in samples:
        logger.info(
            "model '%s' is running warm-up sample %s: %d iteration(s) on each of %d instance(s)",
            config.name,
            sample.label,
            sample.runs,
            len(instances),
        )
        for index, instance in enumerate(instances):
            for run in range(sample.runs):
                try:
                    _run_once(instance, sample.feed, output_names)
                except Exception as exc:
                    raise EngineError(
                        ErrorCode.INTERNAL,
                        f"model '{config.name}' warm-up sample {sample.label} failed on "
                        f"instance {index}, iteration {run + 1} of {sample.runs}: "
                        f"{type(exc).__name__}: {exc}",
                    ) from exc


def _with_sequence_inputs(
    config: model_config_pb2.ModelConfig, model_dir: Path, sample: _Sample
) -> _Sample:
    """A sequence model's sample also gets what the sequence batcher feeds: control
    tensors for a whole sequence in one request (START and END, correlation id 1) and the
    initial implicit states, one per row."""
    if not config.HasField("sequence_batching"):
        return sample
    batched = config.max_batch_size > 0
    rows = next(iter(sample.feed.values())).shape[0] if batched and sample.feed else 1
    policy = sequence_policy(config, instances=1)
    extra = control_tensors(policy.controls, SequenceParameters(1, True, True), rows, batched)
    states = SequenceStates(load_states(config, model_dir), batched).begin(1, start=True)
    for name, initial in states.inputs.items():
        extra[name] = np.repeat(initial, rows, axis=0) if batched else initial
    return dataclasses.replace(sample, feed={**sample.feed, **extra})


# A warm-up request must end within this long (a decoupled model may answer after its
# execute returned); loading fails rather than waiting forever on a model that never ends.
_REQUEST_END_TIMEOUT_S = 300.0


class _WarmupSender:
    """Collects a warm-up request's end: its first error, if any."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.error: EngineError | None = None

    def send(
        self,
        outputs: Mapping[str, np.ndarray] | None = None,
        *,
        final: bool = False,
        error: EngineError | None = None,
    ) -> None:
        if error is not None and self.error is None:
            self.error = error
        if final:
            self.ended.set()

    def is_cancelled(self) -> bool:
        return False


def _run_once(
    instance: BackendInstance | RequestInstance,
    feed: Mapping[str, np.ndarray],
    output_names: Sequence[str],
) -> None:
    if not isinstance(instance, RequestInstance):
        instance.infer(feed, output_names)
        return
    sender = _WarmupSender()
    instance.execute([BackendRequest("warmup", feed, tuple(output_names), DEFAULT_OPTIONS, sender)])
    if not sender.ended.wait(_REQUEST_END_TIMEOUT_S):
        raise EngineError(
            ErrorCode.INTERNAL, f"the request did not end within {_REQUEST_END_TIMEOUT_S:.0f} s"
        )
    if sender.error is not None:
        raise sender.error


def _build_sample(
    config: model_config_pb2.ModelConfig,
    model_dir: Path,
    setting: model_config_pb2.ModelWarmup,
    position: int,
) -> _Sample:
    """Check one ``model_warmup`` entry against the config and build its tensors."""
    blame = _Blame(config.name, setting, position)
    batch_size = _batch_size(blame, setting.batch_size, config.max_batch_size)
    declared = {tensor.name: tensor for tensor in config.input}
    given = sorted(setting.inputs)
    for name in given:
        if name not in declared:
            raise blame.fail(
                f"input '{name}' is not an input of the model, expected one of {_names(declared)}"
            )
    missing = [
        name
        for name, tensor in declared.items()
        if not tensor.optional and name not in setting.inputs
    ]
    if missing:
        raise blame.fail(
            f"no data for required input(s) {_names(missing)}, expected every input of "
            f"{_names(declared)} that is not optional"
        )
    # Seeded so that a random_data sample that breaks a load breaks it every time.
    rng = np.random.default_rng(position)
    feed = {
        name: _input(blame, declared[name], setting.inputs[name], batch_size, model_dir, rng)
        for name in given
    }
    return _Sample(blame.label, max(setting.count, 1), feed)


def _batch_size(blame: _Blame, batch_size: int, max_batch_size: int) -> int | None:
    """The leading dimension to add, or None for a model without batching."""
    if max_batch_size > 0:
        if not 1 <= batch_size <= max_batch_size:
            raise blame.fail(
                f"batch_size is {batch_size}, expected 1 to {max_batch_size} (the model's "
                "max_batch_size)"
            )
        return batch_size
    if batch_size > 1:
        raise blame.fail(
            f"batch_size is {batch_size}, expected 0 or 1 because the model has "
            "max_batch_size 0 (no batching)"
        )
    return None


def _input(
    blame: _Blame,
    declared: model_config_pb2.ModelInput,
    given: model_config_pb2.ModelWarmup.Input,
    batch_size: int | None,
    model_dir: Path,
    rng: np.random.Generator,
) -> np.ndarray:
    name = declared.name
    if given.data_type != declared.data_type:
        raise blame.fail(
            f"input '{name}' has data_type {_type_name(given.data_type)}, expected "
            f"{_type_name(declared.data_type)}"
        )
    datatype = config_type_to_datatype(_type_name(declared.data_type))
    if datatype not in NUMPY_DTYPES:
        raise blame.fail(
            f"input '{name}': warm-up data of type {_type_name(declared.data_type)} is not "
            "supported"
        )
    dtype = NUMPY_DTYPES[datatype]
    dims = tuple(given.dims)
    expected = tuple(declared.dims)
    if any(dim < 0 for dim in dims) or not _matches(dims, expected):
        raise blame.fail(
            f"input '{name}' has dims {shape_text(dims)}, expected {shape_text(expected)} "
            "(without the batch dimension; -1 in the config takes any size, the warm-up "
            "dims must give it)"
        )
    shape = dims if batch_size is None else (batch_size, *dims)
    source = given.WhichOneof("input_data_type")
    if source == "zero_data":
        data = np.full(shape, b"", dtype=dtype) if datatype == "BYTES" else np.zeros(shape, dtype)
    elif source == "random_data":
        data = _random(dtype, shape, rng)
    elif source == "input_data_file":
        one = _file_data(blame, name, given.input_data_file, model_dir, dtype, dims)
        data = one if batch_size is None else np.repeat(one[np.newaxis], batch_size, axis=0)
    else:
        raise blame.fail(
            f"input '{name}' has no data, expected one of zero_data, random_data or input_data_file"
        )
    if declared.HasField("reshape"):
        # The backend takes the shape the model itself has, as ModelVersion.infer feeds it.
        target = tuple(declared.reshape.shape)
        prefix = () if batch_size is None else (batch_size,)
        try:
            data = data.reshape(prefix + target)
        except ValueError:
            raise blame.fail(
                f"input '{name}' with dims {shape_text(dims)} cannot take the config's "
                f"reshape {shape_text(target)}"
            ) from None
    return data


def _file_data(
    blame: _Blame, name: str, file: str, model_dir: Path, dtype: np.dtype, dims: tuple[int, ...]
) -> np.ndarray:
    """One batch item's data from ``warmup/<file>``: raw little-endian elements, or
    length-prefixed strings for TYPE_STRING. Triton repeats it for each batch row."""
    path = _warmup_path(blame, name, file, model_dir)
    shown = f"{WARMUP_DIRECTORY}/{file}"
    count = math.prod(dims)
    if dtype == np.object_:
        data = path.read_bytes()
        try:
            elements = decode_bytes_tensor(data, count, f"input '{name}' in {shown}")
        except ValueError as exc:
            raise blame.fail(str(exc)) from None
        return elements.reshape(dims)
    size = path.stat().st_size  # checked before reading, so a huge file is not read
    if size != count * dtype.itemsize:
        if size % dtype.itemsize == 0:
            got = f"{size // dtype.itemsize} elements"
        else:
            got = f"{size} bytes (not a whole number of {dtype.itemsize}-byte elements)"
        raise blame.fail(
            f"input '{name}' has {got} of data in {shown}, expected {count} "
            f"({count * dtype.itemsize} bytes of {dtype.name} for dims {shape_text(dims)})"
        )
    return np.frombuffer(path.read_bytes(), dtype=dtype).reshape(dims)


def _warmup_path(blame: _Blame, name: str, file: str, model_dir: Path) -> Path:
    """``<model_dir>/warmup/<file>``, refusing any name that leads outside that directory:
    the config must not be a way to read other files on the server."""
    relative = PurePath(file)
    if not file or "\x00" in file or relative.is_absolute() or ".." in relative.parts:
        raise blame.fail(
            f"input '{name}' has input_data_file {file!r}, expected a relative path inside "
            f"the model's {WARMUP_DIRECTORY}/ directory (no absolute path, no '..')"
        )
    directory = (model_dir / WARMUP_DIRECTORY).resolve()
    path = (directory / relative).resolve()
    if not path.is_relative_to(directory):  # a symbolic link that points elsewhere
        raise blame.fail(
            f"input '{name}' has input_data_file {file!r}, which resolves outside the "
            f"model's {WARMUP_DIRECTORY}/ directory"
        )
    if not path.is_file():
        raise blame.fail(
            f"input '{name}' has input_data_file {file!r}, but "
            f"{WARMUP_DIRECTORY}/{file} is not a file in {model_dir}"
        )
    return path


def _random(dtype: np.dtype, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype == np.object_:
        letters = rng.choice(_LETTERS, size=(math.prod(shape), _RANDOM_STRING_LENGTH))
        strings = np.empty(len(letters), dtype=np.object_)
        strings[:] = [row.tobytes() for row in letters]
        return strings.reshape(shape)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.random(size=shape).astype(dtype)  # [0, 1): finite in every float type


def _matches(dims: Sequence[int], expected: Sequence[int]) -> bool:
    return len(dims) == len(expected) and all(
        want == -1 or got == want for got, want in zip(dims, expected, strict=True)
    )


def _type_name(data_type: int) -> str:
    return model_config_pb2.DataType.Name(data_type)


def _names(names: Iterable[str]) -> str:
    return "[" + ", ".join(f"'{name}'" for name in names) + "]"
