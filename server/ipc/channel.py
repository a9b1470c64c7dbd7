"""Length-prefixed message frames over a local stream socket, on the event loop.

Sending: messages sent during one event-loop turn are encoded into one buffer and
written with one system call when the turn ends, so a burst of requests costs the
receiver one wake-up, not one per request. Receiving: each frame is decoded into its
typed message; inline tensor bytes stay views into the frame (no copy), which is why a
frame is never taken from a buffer that is later reused.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

import msgspec

logger = logging.getLogger(__name__)

# A frame is one message: one request or response (its inline tensors bounded by the
# gRPC message size, --max-message-size) or a control message, so 4 GiB always holds it.
_HEADER = struct.Struct("<I")

M = TypeVar("M")


class Channel(asyncio.Protocol, Generic[M]):
    """One end of a connection: ``send`` any message, receive ``M`` (a union of structs)
    through ``on_message``; ``on_closed`` runs once when the connection ends."""

    def __init__(
        self,
        received_type: Any,
        on_message: Callable[[M], None],
        on_closed: Callable[[Exception | None], None],
    ) -> None:
        self._decoder = msgspec.msgpack.Decoder(received_type)
        self._encoder = msgspec.msgpack.Encoder()
        self._on_message = on_message
        self._on_closed = on_closed
        self._transport: asyncio.Transport | None = None
        self._pending = bytearray()  # encoded frames waiting for the end of the turn
        self._received = bytearray()  # a partial frame
        self._needed = 0  # bytes the partial frame needs before it can be parsed
        self._flush_scheduled = False
        self.closed = False

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        self._on_closed(exc)

    def data_received(self, data: bytes) -> None:
        if self._received:
            self._received += data
            if len(self._received) < self._needed:  # a large frame still arriving
                return
            data = bytes(self._received)  # frames must outlive the reused buffer
            self._received.clear()
        view = memoryview(data)
        position, end = 0, len(data)
        while end - position >= _HEADER.size:
            (length,) = _HEADER.unpack_from(view, position)
            if end - position - _HEADER.size < length:
                break
            start = position + _HEADER.size
            position = start + length
            try:
                message = self._decoder.decode(view[start:position])
            except msgspec.DecodeError:
                logger.exception("dropping a connection that sent an undecodable frame")
                self.close()
                return
            self._on_message(message)
            if self.closed:
                return
        if position < end:
            self._received += view[position:]
            self._needed = _HEADER.size
            if end - position >= _HEADER.size:
                self._needed += _HEADER.unpack_from(view, position)[0]

    # --- sending -----------------------------------------------------------------------

    def send(self, message: msgspec.Struct) -> None:
        """Queue ``message``; it leaves when this event-loop turn ends. Dropped silently
        once the connection is closed (the closing side fails what was in flight)."""
        if self._transport is None:
            return
        start = len(self._pending)
        self._pending += b"\0\0\0\0"
        try:
            self._encoder.encode_into(message, self._pending, -1)
        except BaseException:
            del self._pending[start:]  # never leave half a frame behind
            raise
        _HEADER.pack_into(self._pending, start, len(self._pending) - start - _HEADER.size)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is not None and self._pending:
            self._transport.write(self._pending)
        self._pending = bytearray()  # the transport may keep the old one

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()
