"""The typed messages between front processes and the engine process.

msgpack through msgspec: compact arrays tagged by type, decoded straight into these
structs (never pickle: a message can only ever become one of these types). Tensor bytes
up to ``INLINE_LIMIT`` travel inside the message, decoded as views into the received
frame; larger ones are written once into the sender's shared-memory ring and the message
carries only where (``offset``, ``nbytes``).

Keys: a request's ``key`` is unique within one connection, and a connection is one front
process's epoch, so (front, epoch, key) is unique across front processes and restarts.
The client's request id travels only to be echoed.
"""

from __future__ import annotations

from typing import Union

import msgspec

from inferd.engines.catalog import CatalogEntry, ModelInfo
from inferd.engines.client_memory.cuda import CudaRegionStatus
from inferd.engines.client_memory.system import RegionStatus
from inferd.engines.errors import ErrorCode
from inferd.engines.options import (
    DEFAULT_OPTIONS,
    ParameterValue,
    RequestOptions,
    SequenceId,
    SequenceParameters,
)
from inferd.engines.statistics import StatisticsSnapshot
from inferd.engines.types import ModelIndexEntry
from inferd.engines.validation import TensorSpec
from inferd.protos import model_config_pb2

# Larger tensors go through the ring: below this, a copy into the message costs less
# than the bookkeeping of an extent (measured: issue 7's note, ZeroMQ vs ring).
INLINE_LIMIT = 64 * 1024


class Tensor(msgspec.Struct, array_like=True, gc=False):
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: memoryview | None  # inline bytes; None: in the sender's ring
    offset: int = 0  # ring extent, when data is None
    nbytes: int = 0
    # >= 0: typed contents (their element count, BYTES length-prefixed), which the engine
    # checks as such; -1: the wire's raw bytes.
    elements: int = -1
    # An input in this CUDA shared-memory region (``nbytes`` at ``offset``), which the
    # engine reads; the front never touches GPU memory.
    region: str | None = None
    # An output the engine wrote into the client's CUDA shared memory: no bytes here.
    in_shared_memory: bool = False


class WantedOutput(msgspec.Struct, array_like=True, gc=False):
    name: str
    class_count: int = 0
    region: str | None = None  # written by the engine into this CUDA shared-memory slice
    offset: int = 0
    byte_size: int = 0


class Options(msgspec.Struct, array_like=True, gc=False):
    """A request's ``RequestOptions``; requests with the defaults send none."""

    priority: int
    timeout_us: int
    sequence_id: SequenceId
    sequence_start: bool
    sequence_end: bool
    empty_final_response: bool
    parameters: dict[str, ParameterValue]


def to_wire_options(options: RequestOptions) -> Options | None:
    if options is DEFAULT_OPTIONS:
        return None
    sequence = options.sequence
    return Options(
        options.priority,
        options.timeout_us,
        sequence.sequence_id,
        sequence.start,
        sequence.end,
        options.empty_final_response,
        dict(options.parameters),
    )


def from_wire_options(options: Options | None) -> RequestOptions:
    if options is None:
        return DEFAULT_OPTIONS
    return RequestOptions(
        options.priority,
        options.timeout_us,
        SequenceParameters(options.sequence_id, options.sequence_start, options.sequence_end),
        options.empty_final_response,
        options.parameters,
    )


class TraceRef(msgspec.Struct, array_like=True, gc=False):
    """The front's request span, for the engine's spans to join: W3C ids in hex."""

    trace_id: str
    span_id: str
    sampled: bool
    started_ns: int  # time.perf_counter_ns() when the RPC began (CLOCK_MONOTONIC: shared)


# --- front -> engine --------------------------------------------------------------------


class Hello(msgspec.Struct, array_like=True, tag=1):
    front_id: int
    epoch: int
    pid: int


class Infer(msgspec.Struct, array_like=True, tag=2, gc=False):
    key: int
    model: str
    version: int  # -1: the newest
    request_id: str
    inputs: list[Tensor]
    outputs: list[WantedOutput]  # empty: all
    options: Options | None  # None: the defaults
    deadline: float | None  # absolute time.monotonic(), valid in every process here
    trace: TraceRef | None
    stream: bool  # answered by several Results (ModelStreamInfer)


class Abort(msgspec.Struct, array_like=True, tag=3):
    """The client went away: drop the request. Idempotent; the engine still ends the
    key with a Failure, which frees the request's ring extents."""

    key: int


class Credit(msgspec.Struct, array_like=True, tag=4):
    """A stream's consumer took ``count`` more responses: the engine may send as many."""

    key: int
    count: int


class Applied(msgspec.Struct, array_like=True, tag=13):
    """The front applied the engine's Catalog or Regions message ``seq``."""

    seq: int


class Release(msgspec.Struct, array_like=True, tag=5):
    """Response-ring extents the front has finished reading."""

    offsets: list[int]


class StatisticsCall(msgspec.Struct, array_like=True, tag=6):
    call: int
    name: str
    version: int  # -1: every version


class IndexCall(msgspec.Struct, array_like=True, tag=7):
    call: int
    ready_only: bool


class LoadCall(msgspec.Struct, array_like=True, tag=8):
    call: int
    name: str
    directory: str
    config: bytes | None  # a serialized ModelConfig override
    cleanup: str | None  # a private directory of uploaded files, the engine's from now on


class UnloadCall(msgspec.Struct, array_like=True, tag=9):
    call: int
    name: str


class RegisterRegionCall(msgspec.Struct, array_like=True, tag=10):
    """Client system shared memory: registrations live in the engine process, since
    SO_REUSEPORT may send a registration and the requests using it to different fronts."""

    call: int
    name: str
    key: str
    offset: int
    byte_size: int


class RegionStatusCall(msgspec.Struct, array_like=True, tag=11):
    call: int
    name: str  # empty: every region


class UnregisterRegionCall(msgspec.Struct, array_like=True, tag=12):
    call: int
    name: str  # empty: every region


class RegisterCudaRegionCall(msgspec.Struct, array_like=True, tag=14):
    """Client CUDA shared memory: mapped and used only in the engine process."""

    call: int
    name: str
    raw_handle: bytes
    device_id: int
    byte_size: int


class CudaRegionStatusCall(msgspec.Struct, array_like=True, tag=15):
    call: int
    name: str  # empty: every region


class UnregisterCudaRegionCall(msgspec.Struct, array_like=True, tag=16):
    call: int
    name: str  # empty: every region


# --- engine -> front --------------------------------------------------------------------


class WireModelInfo(msgspec.Struct, array_like=True):
    name: str
    version: int
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    config: bytes


class WireCatalogEntry(msgspec.Struct, array_like=True):
    name: str
    versions: list[WireModelInfo]
    failed_versions: tuple[str, ...]


class Welcome(msgspec.Struct, array_like=True, tag=20):
    request_ring: str  # the front writes, the engine reads
    response_ring: str  # the engine writes, the front reads
    ring_bytes: int
    catalog: list[WireCatalogEntry]
    regions: list[RegionStatus]  # client system shared-memory regions registered so far
    cuda_names: list[str]  # and the names of the CUDA ones


class Regions(msgspec.Struct, array_like=True, tag=25):
    """Client shared-memory registrations changed: every front mirrors this list and
    answers Applied(seq)."""

    seq: int
    regions: list[RegionStatus]
    # CUDA regions' names: a front passes tensors naming them to the engine unread.
    cuda_names: list[str]


class Catalog(msgspec.Struct, array_like=True, tag=21):
    """The models changed (a load or unload): every front replaces its catalog and
    answers Applied(seq); the change's caller hears back once all fronts have."""

    seq: int
    entries: list[WireCatalogEntry]


class Result(msgspec.Struct, array_like=True, tag=22, gc=False):
    key: int
    model: str
    version: int
    request_id: str
    outputs: list[Tensor]  # in the model's order; response-ring extents the front releases
    final: bool  # the request's last response


class Failure(msgspec.Struct, array_like=True, tag=23):
    key: int
    code: ErrorCode
    message: str
    final: bool  # a streamed error that ends the request
    raised: bool  # the request failed before the model answered (ends it)


class Reply(msgspec.Struct, array_like=True, tag=24):
    """A control call's answer: its value, or the error it raised."""

    call: int
    statistics: list[StatisticsSnapshot] | None = None
    index: list[ModelIndexEntry] | None = None
    regions: list[RegionStatus] | None = None
    cuda_regions: list[CudaRegionStatus] | None = None
    code: ErrorCode | None = None  # the call failed
    message: str = ""


FrontMessage = Union[  # noqa: UP007 (msgspec reads the union at runtime on Python 3.10)
    Hello,
    Infer,
    Abort,
    Applied,
    Credit,
    Release,
    StatisticsCall,
    IndexCall,
    LoadCall,
    UnloadCall,
    RegisterRegionCall,
    RegionStatusCall,
    UnregisterRegionCall,
    RegisterCudaRegionCall,
    CudaRegionStatusCall,
    UnregisterCudaRegionCall,
]
EngineMessage = Union[Welcome, Catalog, Regions, Result, Failure, Reply]  # noqa: UP007


def to_wire_catalog(entries: tuple[CatalogEntry, ...]) -> list[WireCatalogEntry]:
    return [
        WireCatalogEntry(
            entry.name,
            [
                WireModelInfo(
                    info.name,
                    info.version,
                    info.platform,
                    info.max_batch_size,
                    info.inputs,
                    info.outputs,
                    info.config.SerializeToString(),
                )
                for info in entry.versions
            ],
            entry.failed_versions,
        )
        for entry in entries
    ]


def from_wire_catalog(entries: list[WireCatalogEntry]) -> list[CatalogEntry]:
    return [
        CatalogEntry(
            entry.name,
            tuple(
                ModelInfo(
                    name=info.name,
                    version=info.version,
                    ready_versions=(info.version,),
                    platform=info.platform,
                    max_batch_size=info.max_batch_size,
                    inputs=info.inputs,
                    outputs=info.outputs,
                    config=model_config_pb2.ModelConfig.FromString(info.config),
                )
                for info in entry.versions
            ),
            entry.failed_versions,
        )
        for entry in entries
    ]
