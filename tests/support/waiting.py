"""Bounded waits for what a test cannot be told about directly (another process's log,
a scrape, an exporter): poll until the condition holds, or fail saying what never came.

Waits only bound a test: the conditions are what the test asserts, never a duration."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.server_process import ServerProcess

WAIT_S = 30.0  # a healthy server needs a small fraction of it
POLL_S = 0.02


def wait_until(
    condition: Callable[[], bool],
    what: str,
    *,
    server: ServerProcess | None = None,
    timeout_s: float = WAIT_S,
) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` after ``timeout_s``, or as
    soon as ``server`` (whose log the failure shows) has exited without it holding."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if server is not None and server.process.poll() is not None:
            server.wait()  # its log reader has the last lines once the process is gone
            if condition():
                return
            pytest.fail(f"inferd exited before {what}:\n{server.log_text()}")
        if time.monotonic() > deadline:
            log = f":\n{server.log_text()}" if server is not None else ""
            pytest.fail(f"not within {timeout_s:.0f}s: {what}{log}")
        time.sleep(POLL_S)


def wait_for_log(server: ServerProcess, text: str, timeout_s: float = WAIT_S) -> None:
    """Return once ``server`` has logged ``text``."""
    wait_until(
        lambda: text in server.log_text(),
        f"inferd logs {text!r}",
        server=server,
        timeout_s=timeout_s,
    )
