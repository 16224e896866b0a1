"""The allocator tuning of aiollmux/allocator.py: applied on glibc, left to the user's own."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys

import pytest

from aiollmux.allocator import HeapTrimmer, tune_allocator

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt tuning is for glibc on Linux")
def test_tuned_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert tune_allocator() is True


@pytest.mark.skipif(not GLIBC, reason="elsewhere nothing is tuned, whatever the user set")
@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_the_users_own_setting_wins(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # On glibc the tuning applies (the test above); the user's own setting stops it.
    for other in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, "131072")
    assert tune_allocator() is False


async def test_a_burst_of_large_bodies_is_trimmed_once_after_it_ends() -> None:
    trimmed = asyncio.Event()
    calls: list[float] = []

    def trim() -> bool:
        calls.append(asyncio.get_running_loop().time())
        trimmed.set()
        return True

    trimmer = HeapTrimmer(delay=0.2, trim=trim)
    loop = asyncio.get_running_loop()
    last = 0.0
    for _ in range(5):  # a burst: each body ends within the delay of the one before
        trimmer.large_body_done()
        last = loop.time()
        await asyncio.sleep(0)
    await asyncio.wait_for(trimmed.wait(), 5)
    assert trimmer.trims == 1
    assert len(calls) == 1
    assert calls[0] >= last + 0.2  # not before the burst's quiet period
    trimmer.close()


async def test_closing_the_trimmer_cancels_a_pending_trim() -> None:
    calls: list[int] = []

    def trim() -> bool:
        calls.append(1)
        return True

    trimmer = HeapTrimmer(delay=0.01, trim=trim)
    trimmer.large_body_done()
    trimmer.close()
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, done.set)
    await done.wait()
    assert calls == []


_HEAP_SCRIPT = """
import gc, os
from aiollmux.allocator import malloc_trim, tune_allocator
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
assert tune_allocator()
blocks = [bytes(bytearray(4 << 20)) for _ in range(6)]  # from the heap: below 16 MiB
del blocks
gc.collect()
before = rss()
assert malloc_trim()
print(before - rss())
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_malloc_trim_gives_the_kept_heap_back() -> None:
    # In a child: the thresholds and the heap are process-wide.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _HEAP_SCRIPT], capture_output=True, text=True, env=env, check=True
    )
    assert int(done.stdout) >= 16 << 20  # most of the 24 MiB kept by the trim threshold
