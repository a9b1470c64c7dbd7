"""The one tensor codec both ends of the front/engine link use: what one side encodes the
other reads back byte for byte, inline and through a real shared-memory ring; and the
supervisor's typed events."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator

import msgspec
import numpy as np
import pytest

from inferd.engines import EngineError, ErrorCode
from inferd.protos.datatypes import encode_bytes_tensor
from inferd.server.ipc import messages as m
from inferd.server.ipc import tensors
from inferd.server.ipc.events import EngineReady, FrontReady, receive_event, send_event
from inferd.server.ipc.ring import Segment, segment_name


@pytest.fixture
def ring() -> Iterator[Segment]:
    segment = Segment.create(segment_name(os.getpid(), f"test-{os.urandom(4).hex()}"), 1 << 20)
    yield segment
    segment.unlink()
    segment.close()


def _across(tensor: m.Tensor) -> m.Tensor:
    """As the other process receives it: encoded to msgpack and decoded again."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(tensor), type=m.Tensor)


@pytest.mark.parametrize("nbytes", [0, 1, m.INLINE_LIMIT, m.INLINE_LIMIT + 1, 300_000])
def test_raw_bytes_round_trip_inline_or_through_the_ring(ring: Segment, nbytes: int) -> None:
    data = os.urandom(nbytes)
    raw = tensors.payload("UINT8", data)
    offset = 4096 if tensors.in_ring(raw.nbytes) else None
    sent = _across(tensors.encode("X", "UINT8", (nbytes,), raw, ring, offset))
    assert (sent.data is None) == (offset is not None)
    assert sent.elements == tensors.RAW
    assert bytes(tensors.view(sent, ring, "input", "request ring")) == data


def test_arrays_cross_as_their_bytes_and_come_back_typed(ring: Segment) -> None:
    array = np.arange(40_000, dtype=np.float32).reshape(200, 200)
    raw = tensors.payload("FP32", array)
    sent = _across(tensors.encode("Y", "FP32", array.shape, raw, ring, 0))
    flat = tensors.flat_array("FP32", tensors.view(sent, ring, "output", "response ring"), 40_000)
    assert np.array_equal(flat.reshape(sent.shape), array)
    strided = array[:, ::2]  # not contiguous: copied once into its wire layout
    assert tensors.payload("FP32", strided).tobytes() == np.ascontiguousarray(strided).tobytes()


def test_bytes_tensors_and_typed_contents_keep_their_element_count(ring: Segment) -> None:
    words = np.array([b"", b"caf\xc3\xa9", b"x" * 70_000], dtype=np.object_)
    raw = tensors.payload("BYTES", words)
    assert raw.tobytes() == encode_bytes_tensor(words)
    sent = _across(tensors.encode("T", "BYTES", (3,), raw, ring, 8192, elements=3))
    assert sent.elements == 3
    view = tensors.view(sent, ring, "input", "request ring")
    assert tensors.flat_array("BYTES", view, 3).tolist() == words.tolist()


def test_an_extent_outside_the_ring_is_refused(ring: Segment) -> None:
    stray = m.Tensor("X", "FP32", (4,), None, ring.size - 8, 16)
    with pytest.raises(EngineError) as caught:
        tensors.view(stray, ring, "input", "request ring")
    assert caught.value.code is ErrorCode.INTERNAL
    assert caught.value.message == "input 'X' lies outside the request ring"
    with pytest.raises(EngineError):
        tensors.view(m.Tensor("X", "FP32", (4,), None, -16, 16), ring, "input", "request ring")


def test_supervisor_events_cross_a_pipe_typed() -> None:
    receive, send = multiprocessing.get_context("spawn").Pipe(duplex=False)
    with receive, send:
        send_event(send, EngineReady())
        send_event(send, FrontReady(serving=9, failed=1))
        assert receive_event(receive) == EngineReady()
        assert receive_event(receive) == FrontReady(9, 1)
        send.send_bytes(b"\xc1")  # not msgpack
        with pytest.raises(msgspec.DecodeError):
            receive_event(receive)
