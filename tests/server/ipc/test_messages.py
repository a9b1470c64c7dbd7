"""The front/engine messages and their framing, without processes: what one side sends
is what the other decodes, however the bytes arrive."""

from __future__ import annotations

import asyncio
import dataclasses

import msgspec
import pytest

from inferd.engines import CatalogEntry, EngineError, ErrorCode, ModelCatalog, ModelInfo
from inferd.engines.client_memory.cuda import CudaRegionStatus
from inferd.engines.statistics import ModelStatistics
from inferd.engines.types import ModelIndexEntry, ModelState
from inferd.engines.validation import TensorSpec
from inferd.protos import model_config_pb2
from inferd.server.ipc import messages as m
from inferd.server.ipc.channel import Channel


def _info(version: int) -> ModelInfo:
    return ModelInfo(
        name="m",
        version=version,
        ready_versions=(version,),
        platform="onnxruntime_onnx",
        max_batch_size=8,
        inputs=(TensorSpec("X", "FP32", (-1,)),),
        outputs=(TensorSpec("Y", "FP32", (-1,), reshape=(1, -1)),),
        config=model_config_pb2.ModelConfig(name="m", max_batch_size=8),
    )


def test_catalog_crosses_the_wire_and_answers_as_the_engine() -> None:
    entries = (CatalogEntry("m", (_info(1), _info(3)), ("2",)), CatalogEntry("empty", ()))
    wire = msgspec.msgpack.decode(
        msgspec.msgpack.encode(m.Catalog(1, m.to_wire_catalog(entries))), type=m.EngineMessage
    )
    assert isinstance(wire, m.Catalog)
    catalog = ModelCatalog(m.from_wire_catalog(wire.entries))
    newest = catalog.model_info("m", None)
    assert (newest.version, newest.ready_versions) == (3, (1, 3))
    assert newest.config == entries[0].versions[1].config
    assert catalog.model_info("m", 1).outputs[0].reshape == (1, -1)
    cases = {
        ("m", 2): (ErrorCode.UNAVAILABLE, "'m' version 2 is not at ready state"),
        ("m", 4): (ErrorCode.NOT_FOUND, "'m' version 4 is not found"),
        ("empty", None): (ErrorCode.NOT_FOUND, "'empty' has no available versions"),
        ("other", None): (ErrorCode.NOT_FOUND, "'other' is not found"),
    }
    for (name, version), (code, text) in cases.items():
        with pytest.raises(EngineError) as raised:
            catalog.model_info(name, version)
        assert raised.value.code is code and text in raised.value.message


def test_statistics_and_index_replies_round_trip() -> None:
    statistics = ModelStatistics("m", 1, max_batch_size=4)
    snapshot = statistics.snapshot()
    wire = dataclasses.replace(snapshot, failures=dict(snapshot.failures))
    index = [
        ModelIndexEntry("m", "1", ModelState.READY),
        ModelIndexEntry("n", "", ModelState.NOT_LOADED),
    ]
    decoded = msgspec.msgpack.decode(
        msgspec.msgpack.encode(m.Reply(7, statistics=[wire], index=index)), type=m.EngineMessage
    )
    assert isinstance(decoded, m.Reply)
    assert decoded.statistics == [wire]
    assert decoded.index == index
    failed = msgspec.msgpack.decode(
        msgspec.msgpack.encode(m.Reply(8, code=ErrorCode.NOT_FOUND, message="no")),
        type=m.EngineMessage,
    )
    assert isinstance(failed, m.Reply)
    assert (failed.code, failed.message) == (ErrorCode.NOT_FOUND, "no")


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def _infer(key: int, payload: bytes) -> m.Infer:
    tensor = m.Tensor("X", "UINT8", (len(payload),), memoryview(payload), 0, len(payload))
    return m.Infer(key, "m", -1, f"id-{key}", [tensor], [], None, None, None, False)


def test_a_turn_of_sends_is_one_write_and_frames_survive_any_split() -> None:
    asyncio.run(_one_write_per_turn())


async def _one_write_per_turn() -> None:
    sender: Channel[m.EngineMessage] = Channel(m.EngineMessage, print, print)
    transport = _Transport()
    sender.connection_made(transport)  # type: ignore[arg-type]
    sent = [_infer(key, bytes([key]) * (key * 997)) for key in range(1, 6)]
    for message in sent:
        sender.send(message)
    assert transport.writes == []  # nothing before the turn ends
    await asyncio.sleep(0)
    assert len(transport.writes) == 1
    stream = transport.writes[0]

    for chunk in (1, 7, 1000, len(stream)):
        received: list[m.FrontMessage] = []
        receiver: Channel[m.FrontMessage] = Channel(m.FrontMessage, received.append, print)
        for start in range(0, len(stream), chunk):
            receiver.data_received(stream[start : start + chunk])
        assert [message.key for message in received] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
        for got, want in zip(received, sent, strict=True):
            assert isinstance(got, m.Infer)
            assert got.inputs[0].data is not None and want.inputs[0].data is not None
            assert bytes(got.inputs[0].data) == bytes(want.inputs[0].data)


def test_an_unencodable_message_leaves_no_half_frame() -> None:
    asyncio.run(_no_half_frame())


async def _no_half_frame() -> None:
    sender: Channel[m.EngineMessage] = Channel(m.EngineMessage, print, print)
    transport = _Transport()
    sender.connection_made(transport)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sender.send(m.Reply(1, statistics=[object()]))  # type: ignore[list-item]
    sender.send(m.Reply(2))
    await asyncio.sleep(0)
    received: list[m.EngineMessage] = []
    Channel(m.EngineMessage, received.append, print).data_received(transport.writes[0])
    assert received == [m.Reply(2)]


def test_an_undecodable_frame_closes_the_connection() -> None:
    received: list[m.FrontMessage] = []
    receiver: Channel[m.FrontMessage] = Channel(m.FrontMessage, received.append, print)
    transport = _Transport()
    receiver.connection_made(transport)  # type: ignore[arg-type]
    receiver.data_received(b"\x03\x00\x00\x00abc")
    assert transport.closed and received == []


def test_cuda_shared_memory_crosses_the_wire_as_references() -> None:
    """Fronts never touch GPU memory: tensors travel as region slices, outputs the engine
    wrote come back as shapes, and a handle's bytes arrive exactly (NULs included)."""
    handle = bytes(range(64))
    infer = m.Infer(
        1,
        "m",
        -1,
        "id",
        [m.Tensor("X", "FP32", (1, 4), None, 32, 16, region="images")],
        [m.WantedOutput("Y", region="out", offset=8, byte_size=16), m.WantedOutput("Z")],
        m.Options(3, 500, 2**64 - 1, True, False, True, {"flavour": "plain"}),
        None,
        None,
        False,
    )
    messages: list[object] = [
        infer,
        m.RegisterCudaRegionCall(2, "images", handle, 0, 1 << 20),
        m.CudaRegionStatusCall(3, ""),
        m.UnregisterCudaRegionCall(4, "images"),
    ]
    for message in messages:
        wire = msgspec.msgpack.decode(msgspec.msgpack.encode(message), type=m.FrontMessage)
        assert wire == message
    result = m.Result(
        1, "m", 1, "id", [m.Tensor("Y", "FP32", (1, 4), None, in_shared_memory=True)], True
    )
    reply = m.Reply(3, cuda_regions=[CudaRegionStatus("images", 0, 1 << 20)])
    regions = m.Regions(5, [], ["images"])
    for answer in (result, reply, regions):
        back = msgspec.msgpack.decode(msgspec.msgpack.encode(answer), type=m.EngineMessage)
        assert back == answer
