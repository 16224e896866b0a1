"""Live reconfiguration by file edits, SIGHUP-equivalent triggers and the admin API (§6)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiollmux.config import load_config
from aiollmux.tools.admin_client import render_status
from tests.support import Daemon, Lab, running_daemon, wait_for, without_model


def _served(daemon: Daemon) -> list[str]:
    return sorted(daemon.mux.config.models)


def _write(path: Path, text: str) -> None:
    path.write_text(text)


async def test_in_place_write_adds_a_model(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    path = lab.tmp / "llmux.toml"
    text = lab.config_text()
    _write(path, without_model(text, "beta"))
    async with running_daemon(load_config(path)) as daemon:
        assert _served(daemon) == ["alpha"]
        async with await daemon.chat("beta") as response:
            assert response.status == 404
        _write(path, text)
        await wait_for(lambda: daemon.mux.generation == 2)
        assert _served(daemon) == ["alpha", "beta"]
        async with await daemon.chat("beta") as response:
            assert (await response.json())["model"] == "beta"
        status = await daemon.status()
        assert status["config"]["generation"] == 2
        assert status["config"]["last_reload_error"] is None
        assert 'llmux_config_reloads_total{result="success"} 1.0' in await daemon.metrics()


async def test_atomic_rename_and_vim_style_saves_are_seen(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    path = lab.tmp / "llmux.toml"
    text = lab.config_text()
    _write(path, text)
    async with running_daemon(load_config(path)) as daemon:
        # An editor that writes a temporary file and renames it over the original.
        temporary = lab.tmp / ".llmux.toml.tmp"
        _write(temporary, text + "\n# edit 1\n")
        os.replace(temporary, path)
        await wait_for(lambda: daemon.mux.generation == 2)
        # vim: a swap file, the original renamed to a backup, a new file, backup removed.
        swap = lab.tmp / ".llmux.toml.swp"
        _write(swap, "vim swap")
        backup = lab.tmp / "llmux.toml~"
        os.rename(path, backup)
        _write(path, text.replace('[models."beta"]', '[models."gamma"]'))
        backup.unlink()
        swap.unlink()
        await wait_for(lambda: daemon.mux.generation == 3)
        assert _served(daemon) == ["alpha", "gamma"]


async def test_configmap_symlink_swap_is_seen(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    mount = lab.tmp / "configmap"
    mount.mkdir()
    text = lab.config_text()
    (mount / "..2026_01").mkdir()
    _write(mount / "..2026_01" / "llmux.toml", without_model(text, "beta"))
    (mount / "..data").symlink_to("..2026_01")
    (mount / "llmux.toml").symlink_to("..data/llmux.toml")
    async with running_daemon(load_config(mount / "llmux.toml")) as daemon:
        assert _served(daemon) == ["alpha"]
        # Kubernetes writes a new timestamped dir, then swaps ..data atomically.
        (mount / "..2026_02").mkdir()
        _write(mount / "..2026_02" / "llmux.toml", text)
        (mount / "..data_tmp").symlink_to("..2026_02")
        os.replace(mount / "..data_tmp", mount / "..data")
        await wait_for(lambda: daemon.mux.generation == 2)
        assert _served(daemon) == ["alpha", "beta"]


async def test_invalid_file_keeps_serving_then_fix_applies(lab: Lab) -> None:
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    text = lab.config_text()
    _write(path, text)
    async with running_daemon(load_config(path)) as daemon:
        _write(path, text.replace("port =", "port = 70000 #", 1))
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            assert response.status == 400
            error = (await response.json())["error"]
            assert error["code"] == "invalid_config"
            assert "port" in error["message"]
        status = await daemon.status()
        assert status["config"]["generation"] == 1
        assert "port" in status["config"]["last_reload_error"]
        async with await daemon.chat("alpha") as response:
            assert response.status == 200  # the old config still serves
        assert 'llmux_config_reloads_total{result="failure"} 1.0' in await daemon.metrics()
        _write(path, text + "\n# fixed\n")
        await wait_for(lambda: daemon.mux.generation == 2)
        assert (await daemon.status())["config"]["last_reload_error"] is None


async def test_unchanged_content_is_a_no_op(lab: Lab) -> None:
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    _write(path, lab.config_text())
    async with running_daemon(load_config(path)) as daemon:
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            assert await response.json() == {"status": "unchanged", "generation": 1}
        path.touch()
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            assert (await response.json())["generation"] == 1


async def test_removing_the_active_model_drains_its_stream_then_sleeps_it(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    alpha = lab.backends["alpha"]
    path = lab.tmp / "llmux.toml"
    text = lab.config_text()
    _write(path, text)
    async with running_daemon(load_config(path)) as daemon:
        stream = await daemon.chat("alpha", stream=True, chunks=2, gate="g")
        await stream.content.readuntil(b"\n\n")
        _write(path, without_model(text, "alpha"))
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            assert (await response.json())["status"] == "applied"
        async with await daemon.chat("alpha") as response:
            assert response.status == 404
        assert "start sleep alpha" not in lab.journal.lines()
        # Status still shows it while its stream runs.
        status = await daemon.status()
        draining = status["models"]["alpha"]
        assert (draining["removed"], draining["in_flight"]) == (True, 1)
        [row] = [line for line in render_status(status).splitlines() if line.startswith("alpha")]
        assert row.split()[1:3] == ["draining", "(removed)"]
        alpha.open_gate("g", 1)
        assert (await stream.content.read()).endswith(b"data: [DONE]\n\n")
        stream.close()
        switcher = daemon.mux.switchers["default"]
        await wait_for(lambda: "alpha" not in switcher.models)
        assert lab.journal.lines()[-2:] == ["start sleep alpha", "end sleep alpha"]
        async with await daemon.chat("beta") as response:
            assert (await response.json())["model"] == "beta"
        # A removed model's gauges go; its counters keep their history.
        metrics = await daemon.metrics()
        assert 'llmux_active_model{model="beta"} 1.0' in metrics
        assert 'model="alpha"' not in "".join(
            line for line in metrics.splitlines() if line.startswith(GAUGES)
        )
        assert 'llmux_requests_total{model="alpha",status="200"} 1.0' in metrics
        # Added back, it is exported again from zero.
        _write(path, text)
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            assert (await response.json())["status"] == "applied"
        assert 'llmux_model_in_flight{model="alpha"} 0.0' in await daemon.metrics()
    assert lab.violations() == []


GAUGES = ("llmux_active_model", "llmux_model_in_flight", "llmux_request_queue_depth")


async def test_port_and_policy_changes_apply_to_what_comes_next(lab: Lab) -> None:
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    text = lab.config_text()
    _write(path, text)
    async with running_daemon(load_config(path)) as daemon:
        async with await daemon.chat("alpha") as response:
            assert response.status == 200
        moved = lab.backends["alpha"]
        await lab.add_backends("alpha2")  # a second server that answers as "alpha2"
        new_port = lab.backends["alpha2"].port
        lab.backends["alpha2"].awake_file.touch()
        changed = text.replace(f"port = {moved.port}", f"port = {new_port}")
        changed = changed.replace("[policy]\n", "[policy]\nmin_active_secs = 7\n")
        _write(path, changed)
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            assert (await response.json())["status"] == "applied"
        async with await daemon.chat("alpha") as response:
            assert (await response.json())["model"] == "alpha2"
        assert daemon.mux.switchers["default"].policy_config.min_active_secs == 7
        changed_listen = changed.replace(f"port = {daemon.mux.config.port}", "port = 1")
        _write(path, changed_listen)
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            assert (await response.json())["status"] == "applied"
        assert (await daemon.status())["config"]["restart_required"] is True


async def test_burst_of_writes_gives_few_reloads(lab: Lab) -> None:
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    text = lab.config_text()
    _write(path, text)
    async with running_daemon(load_config(path)) as daemon:
        for index in range(20):
            _write(path, text + f"\n# write {index}\n")
        await wait_for(lambda: daemon.mux.generation >= 2)  # the watcher saw the burst
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            final = (await response.json())["generation"]
        assert 2 <= final <= 5, final


async def test_invalid_toml_syntax_keeps_serving(lab: Lab) -> None:
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    text = lab.config_text()
    _write(path, text)
    async with running_daemon(load_config(path)) as daemon:
        _write(path, text + "\n[models.broken\n")
        await wait_for(lambda: daemon.mux.last_reload_error is not None)
        assert "invalid TOML" in (daemon.mux.last_reload_error or "")
        assert daemon.mux.generation == 1
        async with await daemon.chat("alpha") as response:
            assert response.status == 200


async def test_forced_polling_sees_edits(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    # For network mounts, where inotify sees nothing: watchfiles polls instead.
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "1")
    await lab.add_backends("alpha", "beta")
    path = lab.tmp / "llmux.toml"
    text = lab.config_text()
    _write(path, without_model(text, "beta"))
    async with running_daemon(load_config(path)) as daemon:
        _write(path, text)
        # The poller compares modification times in whole seconds: make it a later one.
        later = path.stat().st_mtime + 2
        os.utime(path, (later, later))
        await wait_for(lambda: daemon.mux.generation == 2)
        assert _served(daemon) == ["alpha", "beta"]


async def test_a_symlink_loop_does_not_stop_the_watcher(lab: Lab) -> None:
    # Path.resolve() raises RuntimeError (not OSError) on a loop on Python 3.11: the
    # watcher task died of it, and edits were ignored from then on.
    await lab.add_backends("alpha")
    real, path = lab.tmp / "real.toml", lab.tmp / "llmux.toml"
    text = lab.config_text()
    real.write_text(text)
    path.symlink_to("real.toml")
    async with running_daemon(load_config(path)) as daemon:
        path.unlink()
        path.symlink_to("llmux.toml")  # a mistake: the link points at itself
        await wait_for(lambda: daemon.mux.last_reload_error is not None)
        path.unlink()
        path.symlink_to("real.toml")  # fixed, and then edited: seen by the watcher
        real.write_text(text + "\n# an edit\n")
        await wait_for(lambda: daemon.mux.generation == 2)
        assert daemon.mux.last_reload_error is None
