"""One request's input tensors for the load harness, built from the model's metadata.

Shapes follow perf_analyzer: a batching model's metadata shape starts with the batch
dimension (-1), which becomes the batch size; ``--shape NAME:DIMS`` gives the shape of one
sample, without that batch dimension (the whole shape for a model that does not batch),
and must fill in every other -1. Data is random from a seed unless a file supplies it:

- ``x.npy``: the one input of a single-input model;
- a directory holding ``NAME.npy`` for each input;
- ``x.json`` in perf_analyzer's ``--input-data`` layout,
  ``{"data": [{"INPUT0": [1, 2, ...], "INPUT1": {"content": [...], "shape": [2, 8]}}]}``,
  of which the first entry is used.

Supplied data may hold one sample, which is repeated to the batch size, or the whole batch.
Every mismatch is a ``ValueError`` that says what the model expects.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..clients import ModelMetadata, TensorMetadata
from ..protos.datatypes import NUMPY_DTYPES

_RANDOM_INT_HIGH = 100  # exclusive: small, non-negative, valid in every integer type


@dataclass(frozen=True, slots=True)
class _Supplied:
    """Data a file gave for one input: flat (shape still to be worked out) or shaped."""

    array: np.ndarray
    flat: bool
    source: str


def parse_shape(text: str) -> tuple[str, list[int]]:
    """``"INPUT0:1,3,224"`` -> ``("INPUT0", [1, 3, 224])``, as ``--shape`` takes it."""
    name, sep, dims_text = text.rpartition(":")
    example = "expected NAME:DIMS such as INPUT0:3,224,224"
    if not sep or not name or not dims_text:
        raise ValueError(f"--shape {text!r}: {example}")
    try:
        dims = [int(dim) for dim in dims_text.split(",")]
    except ValueError:
        raise ValueError(f"--shape {text!r}: dimensions must be integers; {example}") from None
    if any(dim < 0 for dim in dims):
        raise ValueError(f"--shape {text!r}: dimensions must not be negative")
    return name, dims


def build_inputs(
    metadata: ModelMetadata,
    max_batch_size: int,
    batch_size: int,
    shapes: Mapping[str, Sequence[int]],
    data: Path | None,
    seed: int,
) -> dict[str, np.ndarray]:
    """The inputs of one request to ``metadata``'s model, keyed by input name."""
    _check_batch(metadata.name, max_batch_size, batch_size)
    names = [tensor.name for tensor in metadata.inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise ValueError(
            f"--shape names {', '.join(unknown)}, but model '{metadata.name}' has no such "
            f"input; its inputs are {', '.join(names)}"
        )
    batching = max_batch_size > 0
    supplied = _load(data, metadata) if data is not None else {}
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for tensor in metadata.inputs:
        if tensor.datatype not in NUMPY_DTYPES:
            raise ValueError(
                f"input {tensor.name} has datatype {tensor.datatype}, which the load "
                "generator cannot produce"
            )
        pattern = _sample_pattern(tensor, batching, shapes.get(tensor.name))
        if tensor.name in supplied:
            sample = _fit(tensor, supplied[tensor.name], pattern, batch_size, batching)
        else:
            sample = _random(rng, tensor.datatype, _fixed(tensor, pattern, batch_size, batching))
        inputs[tensor.name] = sample
    return inputs


def _check_batch(model: str, max_batch_size: int, batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    if max_batch_size == 0 and batch_size > 1:
        raise ValueError(
            f"model '{model}' does not batch (max_batch_size 0): batch size must be 1, "
            f"not {batch_size}"
        )
    if max_batch_size > 0 and batch_size > max_batch_size:
        raise ValueError(
            f"batch size {batch_size} exceeds model '{model}''s max_batch_size {max_batch_size}"
        )


def _sample_pattern(
    tensor: TensorMetadata, batching: bool, override: Sequence[int] | None
) -> list[int]:
    """One sample's dims (no batch dimension), -1 where still unknown."""
    dims = list(tensor.shape)
    if batching:
        if not dims or dims[0] != -1:
            raise ValueError(
                f"input {tensor.name}: a batching model's metadata shape should start with "
                f"the batch dimension -1, got {dims}"
            )
        dims = dims[1:]
    if override is None:
        return dims
    override = list(override)
    fits = len(override) == len(dims) and all(
        want in (-1, got) for want, got in zip(dims, override, strict=True)
    )
    if not fits:
        batch_note = " (without the batch dimension)" if batching else ""
        raise ValueError(
            f"--shape {tensor.name}:{','.join(map(str, override))} does not fit the model's "
            f"shape {dims}{batch_note}"
        )
    return override


def _fixed(
    tensor: TensorMetadata, pattern: list[int], batch_size: int, batching: bool
) -> list[int]:
    if -1 in pattern:
        raise ValueError(
            f"input {tensor.name} has variable dimensions {pattern}: pass "
            f"--shape {tensor.name}:DIMS to give them sizes"
        )
    return [batch_size, *pattern] if batching else pattern


def _random(rng: np.random.Generator, datatype: str, shape: list[int]) -> np.ndarray:
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if datatype == "BYTES":
        # Decimal digits, so that models which parse their strings as numbers accept them.
        numbers = rng.integers(0, _RANDOM_INT_HIGH, size=shape)
        out = np.empty(shape, dtype=np.object_)
        out.reshape(-1)[:] = [str(number).encode("ascii") for number in numbers.reshape(-1)]
        return out
    if dtype.kind == "f":
        return rng.standard_normal(size=shape).astype(dtype)
    return rng.integers(0, _RANDOM_INT_HIGH, size=shape).astype(dtype)


def _matches(shape: Sequence[int], pattern: Sequence[int]) -> bool:
    return len(shape) == len(pattern) and all(
        want in (-1, got) for want, got in zip(pattern, shape, strict=True)
    )


def _fit(
    tensor: TensorMetadata,
    supplied: _Supplied,
    pattern: list[int],
    batch_size: int,
    batching: bool,
) -> np.ndarray:
    """Shape the supplied data as one sample repeated to the batch, or as the whole batch."""
    array = supplied.array
    if supplied.flat:
        sample = _fixed(tensor, pattern, 1, batching=False)
        full = [batch_size, *sample] if batching else sample
        if array.size == math.prod(sample):
            array = array.reshape(sample)
        elif array.size == math.prod(full):
            array = array.reshape(full)
        else:
            raise ValueError(
                f"{supplied.source} holds {array.size} elements for input {tensor.name}, "
                f"which needs {math.prod(sample)} per sample of shape {sample}"
            )
    if batching and _matches(array.shape, [batch_size, *pattern]):
        return array
    if _matches(array.shape, pattern):
        return np.repeat(array[np.newaxis], batch_size, axis=0) if batching else array
    wanted = f"{pattern} (one sample)"
    if batching:
        wanted += f" or {[batch_size, *pattern]} (the whole batch)"
    raise ValueError(
        f"{supplied.source} holds shape {list(array.shape)} for input {tensor.name}, "
        f"which needs {wanted}"
    )


def _load(data: Path, metadata: ModelMetadata) -> dict[str, _Supplied]:
    if data.is_dir():
        return _load_directory(data, metadata)
    if data.suffix == ".npy":
        if len(metadata.inputs) != 1:
            names = ", ".join(tensor.name for tensor in metadata.inputs)
            raise ValueError(
                f"{data}: a .npy file feeds a single-input model, but model "
                f"'{metadata.name}' has inputs {names}; pass a directory of NAME.npy files "
                "or a .json file"
            )
        tensor = metadata.inputs[0]
        return {tensor.name: _load_npy(data, tensor)}
    if data.suffix == ".json":
        return _load_json(data, metadata)
    raise ValueError(f"{data}: input data must be a .npy file, a .json file or a directory")


def _load_directory(directory: Path, metadata: ModelMetadata) -> dict[str, _Supplied]:
    supplied: dict[str, _Supplied] = {}
    for tensor in metadata.inputs:
        path = directory / f"{tensor.name}.npy"
        if not path.is_file():
            raise ValueError(f"{directory} has no {tensor.name}.npy for input {tensor.name}")
        supplied[tensor.name] = _load_npy(path, tensor)
    return supplied


def _load_npy(path: Path, tensor: TensorMetadata) -> _Supplied:
    array = np.load(path, allow_pickle=tensor.datatype == "BYTES")
    expected = NUMPY_DTYPES.get(tensor.datatype)
    if tensor.datatype == "BYTES":
        if array.dtype.kind not in ("O", "S", "U"):
            raise ValueError(
                f"{path} holds {array.dtype}, but input {tensor.name} is BYTES: save strings "
                "or bytes"
            )
        return _Supplied(_as_bytes(array.reshape(-1)).reshape(array.shape), False, str(path))
    if expected is None or (array.dtype.kind, array.dtype.itemsize) != (
        expected.kind,
        expected.itemsize,
    ):
        raise ValueError(
            f"{path} holds {array.dtype}, but input {tensor.name} is {tensor.datatype}"
            + (f": save it as {expected}" if expected is not None else "")
        )
    return _Supplied(array.astype(expected, copy=False), False, str(path))


def _as_bytes(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    out = np.empty(len(values), dtype=np.object_)
    for index, value in enumerate(values):
        if isinstance(value, bytes | np.bytes_):
            out[index] = bytes(value)
        elif isinstance(value, str):
            out[index] = value.encode("utf-8")
        else:
            out[index] = str(value).encode("utf-8")
    return out


def _load_json(path: Path, metadata: ModelMetadata) -> dict[str, _Supplied]:
    try:
        document = json.loads(path.read_text())
        entry = document["data"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise ValueError(
            f'{path}: expected perf_analyzer input data, {{"data": [{{"INPUT0": [...]}}]}} '
            f"({error})"
        ) from None
    if isinstance(entry, list) and entry:  # sequence models: a list of steps per stream
        entry = entry[0]
    if not isinstance(entry, dict):
        raise ValueError(f'{path}: each entry of "data" must map input names to values')
    tensors = {tensor.name: tensor for tensor in metadata.inputs}
    unknown = sorted(set(entry) - set(tensors))
    if unknown:
        raise ValueError(
            f"{path} has data for {', '.join(unknown)}, but model '{metadata.name}' has no such "
            f"input; its inputs are {', '.join(tensors)}"
        )
    missing = [name for name in tensors if name not in entry]
    if missing:
        raise ValueError(f"{path} has no data for input {', '.join(missing)}")
    source = f"{path} (first entry)"
    return {name: _json_value(entry[name], tensors[name], source) for name in tensors}


def _json_value(value: Any, tensor: TensorMetadata, source: str) -> _Supplied:
    shape = None
    if isinstance(value, dict):
        shape = value.get("shape")
        if "b64" in value:
            raw = base64.b64decode(value["b64"])
            if tensor.datatype == "BYTES":
                flat = _as_bytes([raw])
            else:
                dtype = NUMPY_DTYPES[tensor.datatype]
                flat = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
        elif "content" in value:
            flat = _json_content(value["content"], tensor, source)
        else:
            raise ValueError(f'{source}: input {tensor.name} needs "content" or "b64"')
    else:
        flat = _json_content(value, tensor, source)
    if shape is None:
        return _Supplied(flat, True, source)
    if math.prod(shape) != flat.size:
        raise ValueError(
            f"{source}: input {tensor.name} has {flat.size} values, not the "
            f"{math.prod(shape)} its shape {shape} needs"
        )
    return _Supplied(flat.reshape(shape), False, source)


def _json_content(content: Any, tensor: TensorMetadata, source: str) -> np.ndarray:
    if not isinstance(content, list):
        content = [content]
    if tensor.datatype == "BYTES":
        return _as_bytes(np.asarray(content, dtype=np.object_).reshape(-1))
    try:
        return np.asarray(content, dtype=NUMPY_DTYPES[tensor.datatype]).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(
            f"{source}: the values for input {tensor.name} are not {tensor.datatype}"
        ) from None
