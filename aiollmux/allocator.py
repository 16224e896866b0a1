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
Once a burst of large bodies is over, `HeapTrimmer` gives the kept heap back, so the
idle daemon does not keep the burst's memory.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
import sys
from collections.abc import Callable

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
LARGE_BODY_BYTES = 1024 * 1024  # a body this large ends a burst's quiet period anew
TRIM_AFTER_SECS = 2.0


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


def malloc_trim() -> bool:
    """Give the free memory at the top of glibc's heaps back to the kernel; False where
    there is no glibc (nothing to do)."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - glibc always has it
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


class HeapTrimmer:
    """Keep the heap through a burst of large bodies, give it back after one.

    The thresholds above keep up to 32 MiB of freed heap for the next large body; once no
    large body has finished for `delay` seconds the burst is over, and that memory goes back
    (one `malloc_trim` per burst), so an idle daemon's RSS returns to where it started.
    """

    def __init__(
        self, delay: float = TRIM_AFTER_SECS, trim: Callable[[], bool] = malloc_trim
    ) -> None:
        self.delay = delay
        self.trims = 0  # bursts ended (status and tests)
        self._trim = trim
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def large_body_done(self) -> None:
        """A request with a large body ended: trim `delay` after the last one."""
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.delay
        if self._handle is None:
            self._handle = loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._due:  # another large body ended meanwhile: still a burst
            self._handle = loop.call_at(self._due, self._fire)
            return
        self._handle = None
        self.trims += 1
        self._trim()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
