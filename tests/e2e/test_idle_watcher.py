"""An idle daemon stays idle (issue 12): the config watcher's thread wakes twice a second,
not watchfiles' default twenty times, and never hops back to Python just to wait again,
yet an edit is still seen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import watchfiles

from aiollmux import reload
from aiollmux.config import load_config
from tests.support import Lab, running_daemon, wait_for


async def test_the_watcher_wakes_rarely_and_still_sees_an_edit(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    real_awatch = watchfiles.awatch

    def recording_awatch(*paths: Any, **options: Any) -> AsyncIterator[set[Any]]:
        calls.append(options)
        return real_awatch(*paths, **options)

    monkeypatch.setattr(watchfiles, "awatch", recording_awatch)  # as reload.py calls it
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    path.write_text(lab.config_text())
    async with running_daemon(load_config(path)) as daemon:
        await wait_for(lambda: bool(calls))
        assert calls[0]["step"] == reload.WATCH_STEP_MS >= 500
        assert calls[0]["rust_timeout"] == 0  # no timeout: it waits in Rust until a change
        path.write_text(path.read_text() + "\n# an edit\n")
        await wait_for(lambda: daemon.mux.generation == 2)
