"""Hostile or mistaken config files, and reloads that would make the daemon proxy to
itself (docs/design.md §5 "Exposure and limits", issue 15 items 5, 6 and 10)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from aiollmux.config import load_config
from tests.support import Daemon, Lab, running_daemon


async def reload(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with asyncio.timeout(20):  # a read on the event loop would block it for good
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            return response.status, await response.json()


def make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def make_dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def make_huge(path: Path) -> None:
    text = path.read_text()
    path.write_text(text + "# padding\n" * (2 * 1024 * 1024 // 10))


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (make_fifo, "not a regular file (a FIFO)"),
        (make_dev_zero, "not a regular file (a character device)"),
        (make_huge, "too large for a configuration file"),
    ],
)
async def test_unreadable_config_is_a_reload_error(lab: Lab, spoil: Any, reason: str) -> None:
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    path.write_text(lab.config_text())
    async with running_daemon(load_config(path)) as daemon:
        spoil(path)
        status, body = await reload(daemon)
        assert status == 400
        assert reason in body["error"]["message"]
        assert str(path) in body["error"]["message"]
        async with daemon.client.get(f"{daemon.url}/health") as response:
            assert response.status == 200
        assert (await daemon.status())["config"]["last_reload_error"] is not None
        assert daemon.mux.generation == 1


@pytest.mark.parametrize(("spoil", "reason"), [(make_fifo, "FIFO"), (make_huge, "too large")])
async def test_unreadable_config_at_start_is_exit_2(lab: Lab, spoil: Any, reason: str) -> None:
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    path.write_text(lab.config_text())
    spoil(path)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiollmux", "run", "-c", str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert reason in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_model_on_the_old_listen_port_is_refused(lab: Lab) -> None:
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    text = lab.config_text()
    path.write_text(text)
    config = load_config(path)
    async with running_daemon(config) as daemon:
        # Move the daemon to another port and give the model the one it listens on now:
        # valid for a fresh start, a loop through the running daemon.
        port = lab.backends["alpha"].port
        moved = text.replace(f"\nport = {config.port}\n", f"\nport = {config.port + 1}\n")
        path.write_text(moved.replace(f"port = {port}\n", f"port = {config.port}\n"))
        status, body = await reload(daemon)
        assert status == 400
        assert "models.alpha.port" in body["error"]["message"]
        assert daemon.mux.config.models["alpha"].port == port


async def test_undoing_a_bad_edit_clears_the_reload_error(lab: Lab) -> None:
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    text = lab.config_text()
    path.write_text(text)
    async with running_daemon(load_config(path)) as daemon:
        path.write_text(text + "\nnot toml at all\n")
        assert (await reload(daemon))[0] == 400
        assert (await daemon.status())["config"]["last_reload_error"] is not None
        path.write_text(text)
        status, body = await reload(daemon)
        assert (status, body["status"]) == (200, "unchanged")
        assert (await daemon.status())["config"]["last_reload_error"] is None
        assert daemon.mux.generation == 1
