"""What every child process of the supervisor does first."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

from inferd.server.allocator import tune_malloc

_PR_SET_PDEATHSIG = 1


def prepare_child(role: str, log_level: str, parent_pid: int) -> None:
    """Die with the supervisor (even on its SIGKILL), tune malloc, and log as ``role``."""
    # A terminal's Ctrl-C reaches the supervisor only: it stops the children in order.
    os.setpgid(0, 0)
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
            os._exit(1)
    tune_malloc()
    logging.basicConfig(
        level=log_level.upper(),
        format=f"%(asctime)s %(levelname)s {role}[%(process)d] %(name)s: %(message)s",
    )
