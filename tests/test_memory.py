"""The allocator tuning of aiollmux/memory.py: applied on glibc, left to the user's own."""

from __future__ import annotations

import platform
import sys

import pytest

from aiollmux.memory import tune_allocator

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
