"""The free_memory probe's command on its own (docs/design.md §8): what it printed, or why not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiollmux.free_memory import read_free_memory, wait_for_free_memory


@pytest.mark.parametrize(
    ("command", "free", "detail"),
    [
        ("echo 23.5", 23.5, "printed '23.5'"),
        ("printf 'GPU 0: 11 GiB free\\n'", 0.0, "printed 'GPU 0: 11 GiB free'"),
        ("echo nothing here", None, "printed no number: 'nothing here'"),
        ("echo out of luck >&2; exit 3", None, "exited with status 3: out of luck"),
    ],
)
async def test_one_reading(tmp_path: Path, command: str, free: float | None, detail: str) -> None:
    reading = await read_free_memory(command, group="gpu7", cwd=tmp_path, limit=10)
    assert reading.free_gb == free
    assert detail in reading.detail


async def test_it_sees_its_group_and_never_the_admin_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMUX_ADMIN_TOKEN", "secret")
    command = 'echo "free in $LLMUX_GROUP: 5 ${LLMUX_ADMIN_TOKEN:-no-token}"'
    reading = await read_free_memory(command, group="gpu", cwd=tmp_path, limit=10)
    assert (reading.free_gb, reading.detail) == (5.0, "printed 'free in gpu: 5 no-token'")


async def test_it_never_sees_a_variable_holding_an_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", "sk-live")
    command = 'echo "5 ${MY_KEY:-withheld}"'
    reading = await read_free_memory(
        command, group="gpu", cwd=tmp_path, limit=10, withheld=frozenset({"sk-live"})
    )
    assert reading.detail == "printed '5 withheld'"


async def test_a_hung_command_is_killed_at_its_limit(tmp_path: Path) -> None:
    reading = await read_free_memory(
        f"echo $$ > {tmp_path}/pid; exec sleep 30", group="g", cwd=tmp_path, limit=0.3
    )
    assert reading.free_gb is None
    assert reading.detail == "timed out after 0.3s"
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(pid, 0)


async def test_the_wait_ends_as_soon_as_enough_is_free(tmp_path: Path) -> None:
    problem = await wait_for_free_memory("echo 8", group="g", needed_gb=8, within=0.1, cwd=tmp_path)
    assert problem is None
