"""The threads front's bridge to the event loop, driven directly: a streamed request
side is read no further ahead of the loop than its bound, and a reader whose call has
ended stops. No server; every wait is bounded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from inferd.server.grpc import loop_bridge
from inferd.server.grpc.loop_bridge import LoopBridge
from tests.support.waiting import wait_until


class _Context:
    """The one thing the reader asks of a call's context."""

    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


def test_a_streams_reader_stays_within_its_bound_and_stops_when_the_call_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loop_bridge, "_CHECK_S", 0.01)
    pulled = 0

    def requests() -> Iterator[int]:
        nonlocal pulled
        while True:
            pulled += 1
            yield pulled

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        context = _Context()
        arriving = LoopBridge(loop).requests(requests(), context)  # type: ignore[arg-type]
        bound = loop_bridge._REQUESTS_WAITING
        # Nothing consumed: the reader holds the bound's worth and one more in hand.
        wait_until(lambda: pulled == bound + 1, "the reader filled its bound")

        async def take() -> object:
            return await anext(arriving)

        assert asyncio.run_coroutine_threadsafe(take(), loop).result(30) == 1
        wait_until(lambda: pulled == bound + 2, "one consumed, one more read")
        reader = next(t for t in threading.enumerate() if t.name == "inferd-grpc-stream-reader")
        context.active = False
        reader.join(30)
        assert not reader.is_alive()
        assert pulled == bound + 2
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(30)
        loop.close()
