"""What the supervisor's children tell it, over the pipe each one is started with.

Typed msgspec structs, as on the front/engine link (never pickle: the supervisor only
ever decodes one of these types).
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Union

import msgspec


class EngineReady(msgspec.Struct, array_like=True, tag=1):
    """The engine process loaded its models and accepts front processes."""


class FrontReady(msgspec.Struct, array_like=True, tag=2):
    """A front process serves; what its engine reported when it connected."""

    serving: int  # model versions ready
    failed: int  # model versions that failed to load


SupervisorEvent = Union[EngineReady, FrontReady]  # noqa: UP007 (read at runtime on 3.10)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SupervisorEvent)


def send_event(pipe: Connection, event: SupervisorEvent) -> None:
    pipe.send_bytes(_encoder.encode(event))


def receive_event(pipe: Connection) -> SupervisorEvent:
    """The next event; EOFError or OSError when the child has gone."""
    return _decoder.decode(pipe.recv_bytes())
