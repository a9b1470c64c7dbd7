"""Triton's implicit state for sequence models (``sequence_batching { state [...] }``).

For every live sequence the server keeps one tensor per configured state. Each request
of the sequence is fed the current state as the extra input ``input_name`` (on the
sequence's START: the initial state), and the model's output ``output_name`` becomes
the state the next request is fed. Clients neither send the state input nor see the
state output (unless the config lists it under ``output``, Triton's debugging path).

Read once at load (``load_states``) and kept per sequence (``SequenceStates``); nothing
here locks or blocks: the executor calls it under its lock.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inferd.engines.errors import EngineError, ErrorCode
from inferd.protos import model_config_pb2
from inferd.protos.datatypes import NUMPY_DTYPES, config_type_to_datatype, decode_bytes_tensor

logger = logging.getLogger(__name__)

# Triton's folder, under the model's directory, for initial_state data_file.
INITIAL_STATE_FOLDER = "initial_state"

SequenceKey = int | str


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One implicit state: the input it feeds, the output it comes from, its start value.

    ``initial`` has no batch dimension; ``batched`` models get it as ``[1, ...]``.
    """

    input_name: str
    output_name: str
    datatype: str
    initial: np.ndarray


def load_states(config: model_config_pb2.ModelConfig, model_dir: Path) -> tuple[StateSpec, ...]:
    """Check ``sequence_batching.state`` as Triton does and read the initial states."""
    name = config.name
    specs: list[StateSpec] = []
    declared_inputs = {tensor.name for tensor in config.input}
    controls = {control.name for control in config.sequence_batching.control_input}
    seen_inputs: set[str] = set()
    seen_outputs: set[str] = set()
    for state in config.sequence_batching.state:
        if not state.input_name or not state.output_name:
            raise _invalid(
                f"sequence batching state of model '{name}' must set both input_name and "
                "output_name"
            )
        if state.input_name in seen_inputs or state.output_name in seen_outputs:
            raise _invalid(
                f"sequence batching state '{state.input_name}' -> '{state.output_name}' of "
                f"model '{name}' repeats an input_name or output_name of another state"
            )
        seen_inputs.add(state.input_name)
        seen_outputs.add(state.output_name)
        if state.input_name in declared_inputs or state.input_name in controls:
            raise _invalid(
                f"sequence batching state input '{state.input_name}' is also a model input or "
                f"control tensor of model '{name}': the server fills it in, so leave it out "
                "of 'input'"
            )
        if state.data_type == model_config_pb2.TYPE_INVALID:
            raise _invalid(
                f"sequence batching state '{state.input_name}' of model '{name}' must set data_type"
            )
        if state.use_same_buffer_for_input_output or state.use_growable_memory:
            # GPU buffer placement in Triton; inferd keeps states as host arrays.
            logger.info(
                "model '%s': state '%s' asks for use_same_buffer_for_input_output/"
                "use_growable_memory; inferd keeps states in host memory and ignores them",
                name,
                state.input_name,
            )
        datatype = config_type_to_datatype(model_config_pb2.DataType.Name(state.data_type))
        specs.append(
            StateSpec(
                state.input_name,
                state.output_name,
                datatype,
                _initial_state(name, state, datatype, model_dir),
            )
        )
    return tuple(specs)


def _initial_state(
    model: str,
    state: model_config_pb2.ModelSequenceBatching.State,
    datatype: str,
    model_dir: Path,
) -> np.ndarray:
    dtype = NUMPY_DTYPES[datatype]
    if len(state.initial_state) > 1:
        raise _invalid(
            f"initial_state field for state input '{state.input_name}' must contain exactly "
            f"one or zero element. Found '{len(state.initial_state)}' elements."
        )
    if not state.initial_state:
        # Triton starts variable dimensions at 1.
        shape = tuple(1 if dim == -1 else int(dim) for dim in state.dims)
        return _zeros(shape, dtype)
    initial = state.initial_state[0]
    where = f"state input '{state.input_name}' of model '{model}'"
    if initial.data_type != state.data_type:
        raise _invalid(
            f"The data type used for 'initial_state' field of {where} does not match the "
            "state data type."
        )
    if not initial.name:
        raise _invalid(f"Field 'name' must be set when using initial_state for {where}.")
    if len(initial.dims) != len(state.dims):
        raise _invalid(
            f"Number of dimensions in 'initial_state' doesn't match the size of 'state' "
            f"dimensions for {where}. {len(initial.dims)} != {len(state.dims)}"
        )
    for have, want in zip(initial.dims, state.dims, strict=True):
        if have < 0:
            raise _invalid(f"'initial_state' field for {where} contains variable dimensions.")
        if want != -1 and have != want:
            raise _invalid(
                f"'initial_state' dim for {where} doesn't match 'state' dim description. "
                f"{have} != {want}"
            )
    shape = tuple(int(dim) for dim in initial.dims)
    kind = initial.WhichOneof("state_data")
    if kind == "zero_data":
        return _zeros(shape, dtype)
    if kind != "data_file":
        raise _invalid(f"initial_state setting expects {where} to have state_data set")
    path = model_dir / INITIAL_STATE_FOLDER / initial.data_file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _invalid(
            f"cannot read initial_state data_file '{initial.data_file}' for {where}: "
            f"{exc.strerror or exc} (expected it under {model_dir / INITIAL_STATE_FOLDER})"
        ) from None
    count = math.prod(shape)
    if datatype == "BYTES":
        try:
            return decode_bytes_tensor(data, count, where).reshape(shape)
        except ValueError as exc:
            raise _invalid(f"initial_state data_file '{initial.data_file}': {exc}") from None
    size = count * dtype.itemsize
    if len(data) < size:
        raise _invalid(
            f"initial_state setting expects {size} bytes, but the data provided from "
            f"{initial.data_file} only has {len(data)} bytes."
        )
    # Triton reads the raw bytes in the machine's order (little-endian everywhere it runs).
    return np.frombuffer(data[:size], dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def _zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if dtype == np.object_:
        array = np.empty(shape, dtype=np.object_)
        array.fill(b"")  # Triton zeroes the length prefixes: empty strings
        return array
    return np.zeros(shape, dtype=dtype)


def _invalid(message: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True, slots=True)
class StateLease:
    """What one request of a sequence was fed, and which generation of its state it read
    (a START makes a new one), so a late update never lands in a later sequence."""

    sequence_id: SequenceKey
    generation: int
    inputs: Mapping[str, np.ndarray]

    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Requests batch together only when their states have equal shapes."""
        return tuple(array.shape for array in self.inputs.values())


class SequenceStates:
    """The state tensors of the live sequences of one model version.

    Not thread-safe: the executor calls it under its lock. An entry exists from the
    sequence's START until ``free`` (the sequence ended or went idle), so memory is
    bounded by the live-sequence cap.
    """

    def __init__(self, specs: Iterable[StateSpec], batched: bool) -> None:
        self._specs = tuple(specs)
        self._batched = batched
        self._states: dict[SequenceKey, tuple[int, dict[str, np.ndarray]]] = {}
        self._generations = 0

    def __len__(self) -> int:
        return len(self._states)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.output_name for spec in self._specs)

    def begin(self, sequence_id: SequenceKey, start: bool) -> StateLease:
        """The state inputs for the sequence's next request; a START resets them."""
        entry = self._states.get(sequence_id)
        if start or entry is None:
            # A non-START request always finds its sequence's entry (state is freed only
            # when the scheduler frees the sequence); starting over is the safe fallback.
            self._generations += 1
            entry = (
                self._generations,
                {spec.input_name: self._initial(spec) for spec in self._specs},
            )
            self._states[sequence_id] = entry
        generation, tensors = entry
        return StateLease(sequence_id, generation, dict(tensors))

    def update(self, lease: StateLease, outputs: Mapping[str, np.ndarray]) -> None:
        """Keep the model's state outputs as the sequence's next state inputs.

        A state output the model left out keeps that state as it was; a sequence freed
        or restarted since the lease was taken keeps what it has.
        """
        entry = self._states.get(lease.sequence_id)
        if entry is None or entry[0] != lease.generation:
            return
        tensors = entry[1]
        for spec in self._specs:
            array = outputs.get(spec.output_name)
            if array is None:
                continue
            array = np.asarray(array)
            if array.dtype != tensors[spec.input_name].dtype:
                array = array.astype(tensors[spec.input_name].dtype)
            # Own the data: the output may be a view into the whole batch's result.
            tensors[spec.input_name] = array.copy()

    def free(self, sequence_id: SequenceKey) -> None:
        self._states.pop(sequence_id, None)

    def clear(self) -> None:
        self._states.clear()

    def _initial(self, spec: StateSpec) -> np.ndarray:
        initial = spec.initial
        return initial[np.newaxis, ...].copy() if self._batched else initial.copy()
