"""Tensors across the front/engine link, the same way in both directions.

A tensor's bytes (BYTES elements length-prefixed, as on the gRPC wire) travel inside
its message up to ``INLINE_LIMIT``; larger ones are copied once into the sending side's
ring, and the message says where. The side that sends decides whether to wait for ring
room (a front waits until the request's deadline; the engine answers inline when its
ring is full) and passes the extent it got, or None, to ``encode``. The receiving side
reads through ``view``, which refuses an extent outside the ring.
"""

from __future__ import annotations

import numpy as np

from inferd.engines import EngineError, ErrorCode
from inferd.protos.datatypes import NUMPY_DTYPES, decode_bytes_tensor, encode_bytes_tensor
from inferd.server.ipc import messages as m
from inferd.server.ipc.ring import Segment

RAW = -1  # ``Tensor.elements`` for the wire's raw bytes (checked by size, not by count)


def payload(datatype: str, data: bytes | memoryview | np.ndarray) -> np.ndarray:
    """The bytes that cross for ``data``: raw wire bytes as they are, arrays flattened
    (BYTES arrays length-prefixed), as one flat uint8 array (no copy where possible)."""
    if isinstance(data, np.ndarray):
        if datatype == "BYTES":
            return np.frombuffer(encode_bytes_tensor(data), np.uint8)
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(data, np.uint8)


def in_ring(nbytes: int) -> bool:
    """Whether a tensor of ``nbytes`` should go through the ring rather than inline."""
    return nbytes > m.INLINE_LIMIT


def encode(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    raw: np.ndarray,
    ring: Segment | None,
    offset: int | None,
    elements: int = RAW,
) -> m.Tensor:
    """``raw`` (from ``payload``) inline, or copied into ``ring`` at ``offset``, an extent
    of ``raw.nbytes`` the caller allocated. ``elements`` >= 0: typed contents, which the
    receiver checks by element count."""
    nbytes = raw.nbytes
    if offset is None or ring is None:
        return m.Tensor(name, datatype, shape, raw.data, 0, nbytes, elements)
    np.frombuffer(ring.buffer, np.uint8, nbytes, offset)[:] = raw
    return m.Tensor(name, datatype, shape, None, offset, nbytes, elements)


def view(tensor: m.Tensor, ring: Segment | None, kind: str, ring_name: str) -> memoryview:
    """The tensor's bytes, inline or in place in ``ring`` (no copy). ``kind`` ("input",
    "output") and ``ring_name`` ("request ring") word the error for an extent outside it."""
    if tensor.data is not None:
        return tensor.data
    if ring is None or not 0 <= tensor.offset <= ring.size - tensor.nbytes:
        raise EngineError(
            ErrorCode.INTERNAL, f"{kind} '{tensor.name}' lies outside the {ring_name}"
        )
    return ring.buffer[tensor.offset : tensor.offset + tensor.nbytes]


def flat_array(datatype: str, buffer: memoryview, count: int) -> np.ndarray:
    """``count`` elements of ``datatype`` from ``buffer``: a view for fixed-size types, a
    decoded object array for BYTES."""
    if datatype == "BYTES":
        return decode_bytes_tensor(buffer, count)
    return np.frombuffer(buffer, NUMPY_DTYPES[datatype], count)
