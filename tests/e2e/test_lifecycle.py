"""Startup adoption, health monitoring, idle sleep and graceful shutdown (docs/design.md §7)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
import tomllib
from pathlib import Path

import aiohttp
import pytest

from tests.support import Lab, daemon_process, running_daemon, wait_for, without_model


async def test_awake_model_is_adopted_without_waking(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    await lab.add_backends("alpha", "beta")
    lab.backends["beta"].awake_file.touch()  # beta survived a restart of aiollmux
    with caplog.at_level(logging.INFO, logger="aiollmux"):
        async with running_daemon(lab.config()) as daemon:
            assert daemon.mux.switchers["default"].active == "beta"
            async with await daemon.chat("beta") as response:
                assert (await response.json())["model"] == "beta"
    assert lab.journal.lines() == []  # no wake hook ran
    assert any(getattr(r, "event", None) == "model_adopted" for r in caplog.records)


async def test_several_awake_models_are_all_put_to_sleep(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta", "gamma")
    lab.backends["alpha"].awake_file.touch()
    lab.backends["beta"].awake_file.touch()
    async with running_daemon(lab.config()) as daemon:
        assert daemon.mux.switchers["default"].state() == "idle"
        assert sorted(lab.journal.events("end")) == ["end sleep alpha", "end sleep beta"]
        assert not lab.backends["alpha"].awake
        async with await daemon.chat("gamma") as response:
            assert (await response.json())["model"] == "gamma"
    assert lab.violations() == []


async def test_crashed_backend_is_lost_and_woken_again(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    await lab.add_backends("alpha")
    backend = lab.backends["alpha"]
    async with running_daemon(lab.config(top="alive_interval_secs = 0.1")) as daemon:
        switcher = daemon.mux.switchers["default"]
        async with await daemon.chat("alpha") as response:
            assert response.status == 200
        # The backend dies on its own: its process is gone and so is its "awake" state.
        await backend.stop()
        backend.awake_file.unlink()
        with caplog.at_level(logging.INFO, logger="aiollmux"):
            async with await daemon.chat("alpha") as response:
                assert response.status == 502  # and this triggers an alive check at once
            await wait_for(lambda: switcher.active is None)
        assert any(getattr(r, "event", None) == "model_lost" for r in caplog.records)
        assert "start sleep alpha" not in lab.journal.lines()  # a lost model is not slept
        await backend.start()  # same port: the next wake brings it back
        async with await daemon.chat("alpha") as response:
            assert (await response.json())["model"] == "alpha"
        assert lab.journal.count("start wake alpha") == 2
    assert lab.violations() == []


async def test_idle_model_is_put_to_sleep(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config(policy="idle_sleep_secs = 0.2")) as daemon:
        switcher = daemon.mux.switchers["default"]
        with caplog.at_level(logging.INFO, logger="aiollmux"):
            async with await daemon.chat("alpha") as response:
                assert response.status == 200
            await wait_for(lambda: switcher.active is None)
        assert lab.journal.lines()[-2:] == ["start sleep alpha", "end sleep alpha"]
        assert any(getattr(r, "event", None) == "idle_sleep" for r in caplog.records)
        async with await daemon.chat("alpha") as response:
            assert response.status == 200
        assert lab.journal.count("start wake alpha") == 2


async def test_idle_sleep_waits_for_a_long_stream(lab: Lab) -> None:
    await lab.add_backends("alpha")
    backend = lab.backends["alpha"]
    async with running_daemon(lab.config(policy="idle_sleep_secs = 0.1")) as daemon:
        switcher = daemon.mux.switchers["default"]
        stream = await daemon.chat("alpha", stream=True, chunks=2, gate="g")
        await stream.content.readuntil(b"\n\n")
        monitor = daemon.mux.monitors["default"]
        ticks = monitor.ticks
        await wait_for(lambda: monitor.ticks >= ticks + 3)  # it looked, several times
        assert switcher.active == "alpha"
        assert switcher.in_flight("alpha") == 1
        backend.open_gate("g", 1)
        await stream.read()
        stream.close()
        await wait_for(lambda: switcher.active is None)
    assert lab.violations() == []


async def test_model_id_never_reaches_a_shell(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        async with await daemon.chat('"; touch pwned #') as response:
            assert response.status == 404
        async with await daemon.chat("$(touch pwned)") as response:
            assert response.status == 404
    assert not (lab.tmp / "pwned").exists()
    assert lab.journal.lines() == []


def _write_config(lab: Lab, **options: object) -> Path:
    path = lab.tmp / "llmux.toml"
    path.write_text(lab.config_text(**options))  # type: ignore[arg-type]
    return path


async def test_sigterm_lets_the_stream_finish_and_fails_queued(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    alpha = lab.backends["alpha"]
    go = lab.tmp / "go"
    hooks = {"beta": {"wake": f"while [ ! -e {go} ]; do sleep 0.02; done"}}
    config = _write_config(lab, hooks=hooks, top="shutdown_timeout_secs = 20")
    async with daemon_process(config) as daemon, aiohttp.ClientSession() as client:
        body = {"model": "alpha", "stream": True, "chunks": 2, "gate": "g"}
        stream = await client.post(f"{daemon.url}/v1/chat/completions", json=body)
        await stream.content.readuntil(b"\n\n")
        queued = asyncio.create_task(
            client.post(f"{daemon.url}/v1/chat/completions", json={"model": "beta"})
        )
        await wait_for(
            lambda: any(
                e.get("event") == "switch_started" and e.get("to") == "beta"
                for e in daemon.events()
            )
        )
        daemon.process.send_signal(signal.SIGTERM)
        async with await queued as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "shutting_down"
        alpha.open_gate("g", 1)
        rest = await stream.content.read()
        assert rest.endswith(b"data: [DONE]\n\n")
        stream.close()
        assert await asyncio.wait_for(daemon.process.wait(), 20) == 0
    assert "shutting_down" in daemon.event_names()
    assert not _wake_hooks_running(go)


def _wake_hooks_running(marker: Path) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(marker).encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


async def test_second_signal_exits_at_once(lab: Lab) -> None:
    await lab.add_backends("alpha")
    config = _write_config(lab, top="shutdown_timeout_secs = 300")
    async with daemon_process(config) as daemon, aiohttp.ClientSession() as client:
        body = {"model": "alpha", "stream": True, "chunks": 2, "gate": "never"}
        stream = await client.post(f"{daemon.url}/v1/chat/completions", json=body)
        await stream.content.readuntil(b"\n\n")
        daemon.process.send_signal(signal.SIGTERM)
        await wait_for(lambda: "shutting_down" in daemon.event_names())
        daemon.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.process.wait(), 10) == 130
        stream.close()


async def test_systemd_readiness_and_stopping(lab: Lab) -> None:
    await lab.add_backends("alpha")
    config = _write_config(lab)
    address = str(lab.tmp / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        async with daemon_process(config, env={**os.environ, "NOTIFY_SOCKET": address}) as daemon:
            ready = await asyncio.wait_for(loop.sock_recv(listener, 1024), 10)
            assert ready == b"READY=1"
            daemon.process.send_signal(signal.SIGHUP)
            reloading = await asyncio.wait_for(loop.sock_recv(listener, 1024), 10)
            state, stamp = reloading.decode().split("\n")
            assert state == "RELOADING=1"
            assert stamp.startswith("MONOTONIC_USEC=")
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert 0 < int(stamp.removeprefix("MONOTONIC_USEC=")) <= now
            reloaded = await asyncio.wait_for(loop.sock_recv(listener, 1024), 10)
            assert reloaded == b"READY=1"
            daemon.process.send_signal(signal.SIGTERM)
            stopping = await asyncio.wait_for(loop.sock_recv(listener, 1024), 10)
            assert stopping == b"STOPPING=1"
            assert await asyncio.wait_for(daemon.process.wait(), 20) == 0


async def test_sleep_on_shutdown(lab: Lab) -> None:
    await lab.add_backends("alpha")
    config = _write_config(lab, top="sleep_on_shutdown = true")
    async with daemon_process(config) as daemon, aiohttp.ClientSession() as client:
        async with client.post(
            f"{daemon.url}/v1/chat/completions", json={"model": "alpha"}
        ) as response:
            assert response.status == 200
        daemon.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.process.wait(), 20) == 0
    assert lab.journal.lines()[-2:] == ["start sleep alpha", "end sleep alpha"]
    assert not lab.backends["alpha"].awake


async def test_sighup_triggers_one_reload(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    text = lab.config_text()
    config = lab.tmp / "llmux.toml"
    config.write_text(without_model(text, "beta"))
    async with daemon_process(config) as daemon, aiohttp.ClientSession() as client:
        config.write_text(text)
        daemon.process.send_signal(signal.SIGHUP)

        await wait_for(lambda: "config_reloaded" in daemon.event_names())
        async with client.get(f"{daemon.url}/admin/status") as response:
            assert (await response.json())["config"]["generation"] == 2
        requested = [e for e in daemon.events() if e.get("event") == "reload_requested"]
        assert [e["by"] for e in requested].count("SIGHUP") == 1
        async with client.post(
            f"{daemon.url}/v1/chat/completions", json={"model": "beta"}
        ) as response:
            assert response.status == 200
        daemon.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.process.wait(), 20) == 0


async def test_config_warnings_are_logged_at_start(lab: Lab) -> None:
    await lab.add_backends("alpha")
    policy = 'name = "cost-aware"\nrequest_timeout_secs = 5\nmax_wait_secs = 60\n'
    config = _write_config(lab, policy=policy)
    async with daemon_process(config) as daemon:
        await wait_for(lambda: "config_warning" in daemon.event_names())
        [warning] = [e for e in daemon.events() if e.get("event") == "config_warning"]
        assert warning["level"] == "warning"
        assert "policy.request_timeout_secs: 5 s is shorter than" in warning["message"]


async def test_sighup_while_starting_is_ignored_not_fatal(lab: Lab) -> None:
    # SIGHUP's default action ends a process: before the handler was installed at start,
    # a reload asked for during adoption killed the daemon and orphaned the hook.
    await lab.add_backends("alpha")
    go, journal = lab.tmp / "go", lab.journal.path
    alive = f"echo 'probe alpha' >> {journal}; while [ ! -e {go} ]; do sleep 0.02; done; exit 1"
    config = _write_config(lab, hooks={"alpha": {"alive": alive}})
    async with daemon_process(config, healthy=False) as daemon:
        await wait_for(lambda: "probe alpha" in lab.journal.lines())  # adoption under way
        daemon.process.send_signal(signal.SIGHUP)
        await wait_for(lambda: "sighup_ignored" in daemon.event_names())
        go.touch()
        await wait_for(lambda: "listening" in daemon.event_names())
        assert daemon.process.returncode is None
        daemon.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.process.wait(), 20) == 0


async def test_a_taken_port_stops_the_daemon_before_any_hook_runs(lab: Lab) -> None:
    # A second instance on the same port must not probe (or sleep, with
    # sleep_on_shutdown) the models the first one serves.
    await lab.add_backends("alpha")
    journal = lab.journal.path
    hooks = {"alpha": {"alive": f"echo 'probe alpha' >> {journal}; exit 0"}}
    config = _write_config(lab, top="sleep_on_shutdown = true", hooks=hooks)
    port = tomllib.loads(config.read_text())["port"]
    with socket.socket() as first:
        first.bind(("127.0.0.1", port))
        first.listen()
        run = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aiollmux", "run", "-c", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(run.communicate(), 30)
    assert run.returncode == 1
    assert "Address already in use" in stderr.decode()
    assert lab.journal.lines() == []  # no alive probe, no sleep hook
