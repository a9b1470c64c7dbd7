"""glibc malloc settings for a server that moves large tensors.

glibc serves allocations above its mmap threshold (128 KiB, raised only as such blocks
are freed) with a fresh mmap each time, and returns freed heap tops to the system past
128 KiB: a 600 KB buffer allocated that way costs about 150 page faults. Measured
(docs/benchmarks.md, 600 KB identity requests): about 80-110 minor faults per request in
one process and about 520 with two front processes, against 6-22 with these settings,
and more throughput. Memory stays bounded: up to
``TRIM_THRESHOLD`` of free heap per malloc arena is kept for reuse instead of returned.
The MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ variables, when set, win.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD = 16 * 1024 * 1024  # tensors up to this reuse heap memory
TRIM_THRESHOLD = 128 * 1024 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> None:
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
