"""The lab itself (tests/support.py): what its daemons see of their configuration."""

from __future__ import annotations

import logging

import pytest

from tests.support import Lab, running_daemon, wait_for


async def test_the_labs_daemon_reads_its_config_file_without_a_failure(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    # A daemon's watcher reloads `config.source` as it starts, and so does POST
    # /admin/reload: a lab config that named a file never written logged "config reload
    # failed ... file not found" in every test that started a daemon.
    caplog.set_level(logging.DEBUG, logger="aiollmux.reload")
    await lab.add_backends("alpha", "beta")
    config = lab.config()
    async with running_daemon(config) as daemon:
        await wait_for(
            lambda: any(
                record.__dict__.get("by") == "the watcher starting" for record in caplog.records
            )
        )
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            # Ran after the watcher's own reload: the file is the config already applied.
            assert response.status == 200, await response.text()
            assert await response.json() == {"status": "unchanged", "generation": 1}
        assert lab.config() != config  # another config, in a file of its own:
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            assert (await response.json())["status"] == "unchanged"  # not this daemon's
    failures = [r for r in caplog.records if r.__dict__.get("event") == "config_reload_failed"]
    assert failures == []
