"""What every serving process does around its life: run its event loop, and turn
signals into an orderly stop.

Signals only set a flag. The first SIGTERM/SIGINT asks for a drain (health turns
NOT_SERVING, new RPCs are refused, those in flight get the grace period); a second
exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger("inferd.server")


class ShutdownSignals:
    def __init__(self, grace_period_s: float) -> None:
        self._grace_period_s = grace_period_s
        self._requested = asyncio.Event()
        self._received = 0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)

    async def wait(self) -> None:
        """Returns once the first signal has come."""
        await self._requested.wait()

    def _on_signal(self, signum: int) -> None:
        self._received += 1
        if self._received > 1:
            logger.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        logger.info(
            "%s: draining (up to %.0fs; send it again to exit now)",
            signal.Signals(signum).name,
            self._grace_period_s,
        )
        self._requested.set()


def run_loop(main: Coroutine[Any, Any, None], use_uvloop: bool) -> None:
    """Run ``main`` on uvloop where asked and installed, else on asyncio's own loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            logger.info("uvloop is not installed: using asyncio's event loop")
        else:
            uvloop.run(main)
            return
    asyncio.run(main)
