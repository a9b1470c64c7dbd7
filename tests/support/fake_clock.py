"""A clock for code that takes one (``clock=``): time moves only when a test says."""

from __future__ import annotations

import threading


class FakeClock:
    """Callable like ``time.monotonic``; thread-safe, since executors read it from their
    instance and timer threads."""

    def __init__(self, now: float = 1000.0) -> None:
        self._now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
