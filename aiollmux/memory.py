"""Allocator tuning for large request bodies (glibc on Linux).

A proxy reads each body whole, routes it and lets it go. With glibc's defaults a
multi-megabyte body is freed back to the kernel after the request (by munmap, or by
trimming the heap), so the next one faults in thousands of fresh pages: on a VM that
costs more than the routing and the copy together (`benchmarks/`: an 8 MiB body took
~20 ms over a direct request with the defaults, ~3 ms with these settings, for about
16 MiB more resident memory once large bodies have been seen).

Bodies up to 16 MiB come from the heap, and up to 32 MiB of free heap is kept for the
next one; larger ones are mapped and unmapped as before. A user's own
`MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` wins: then nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_allocator() -> bool:
    """Apply the thresholds above; False where that is not glibc, or the user chose."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - glibc always has it
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success, 0 on error.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
