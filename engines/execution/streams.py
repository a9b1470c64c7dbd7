"""One request's responses, carried from a model's thread to the event loop, bounded.

A decoupled model may answer a request many times, from any thread, at any pace. The
responses wait here until the front end has written them; when ``capacity`` are waiting
the model's thread blocks in ``put`` (back-pressure on the model, never on the event
loop), so a slow client costs bounded memory. A consumer that goes away cancels the
stream: blocked producers wake up, and later responses are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

import numpy as np

from inferd.engines.errors import EngineError

DEFAULT_CAPACITY = 64
_POLL_S = 0.1  # a blocked producer re-checks cancellation this often


@dataclass(frozen=True, slots=True)
class StreamedResponse:
    """One response of a request: outputs, or an error, and whether it is the last."""

    outputs: dict[str, np.ndarray] | None
    error: EngineError | None
    final: bool


class ResponseStream:
    """Bounded hand-off of one request's responses from producer threads to one loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = DEFAULT_CAPACITY):
        self._loop = loop
        self._queue: asyncio.Queue[StreamedResponse] = asyncio.Queue()
        self._slots = threading.Semaphore(capacity)
        self._cancelled = threading.Event()

    def put(self, response: StreamedResponse) -> bool:
        """Queue a response (any thread but the loop's); False if the consumer is gone."""
        while not self._slots.acquire(timeout=_POLL_S):
            if self._cancelled.is_set():
                return False
        if self._cancelled.is_set():
            return False
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, response)
        except RuntimeError:  # the loop has closed: nobody will read this
            self._cancelled.set()
            return False
        return True

    async def get(self) -> StreamedResponse:
        response = await self._queue.get()
        self._slots.release()
        return response

    def cancel(self) -> None:
        """The consumer is gone: wake blocked producers; drop what waits and what comes."""
        self._cancelled.set()
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                self._queue.get_nowait()
                self._slots.release()

    def cancelled(self) -> bool:
        return self._cancelled.is_set()
