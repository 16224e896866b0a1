"""`aiollmux events` and `aiollmux status --watch` as real subprocesses against a real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.support import Daemon, Lab, running_daemon, start_cli


class Follower:
    """A following CLI command: its stdout, line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def line_with(self, text: str) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(30):
            while True:
                raw = await self.process.stdout.readline()
                assert raw, f"the command ended before printing {text!r}: {self.lines}"
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if text in line:
                    return line


@asynccontextmanager
async def following(*args: str, token: str | None = None) -> AsyncIterator[Follower]:
    process = await start_cli(*args, token=token)
    try:
        yield Follower(process)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _switch(daemon: Daemon, model: str) -> None:
    async with daemon.client.post(f"{daemon.url}/admin/switch", json={"model": model}) as answer:
        assert answer.status == 200


async def test_events_prints_one_line_per_event(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with (
        running_daemon(lab.config()) as daemon,
        following("events", "--url", daemon.url) as events,
    ):
        first = await events.line_with("snapshot")
        assert "1 models; default idle (none awake)" in first
        await _switch(daemon, "alpha")
        await events.line_with("model_activated")
        assert [line.split()[1] for line in events.lines[1:]] == [
            "switch_started",
            "hook_completed",
            "model_activated",
        ]
        assert "model 'alpha' active after" in events.lines[-1]
        async with await daemon.chat("alpha") as answer:
            assert answer.status == 200
        line = await events.line_with("requests")
        assert line.endswith("alpha: 1 (200: 1)")


async def test_events_json_prints_the_raw_objects(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with (
        running_daemon(lab.config()) as daemon,
        following("events", "--json", "--url", daemon.url) as events,
    ):
        snapshot = json.loads(await events.line_with('"snapshot"'))
        assert snapshot["status"]["models"]["alpha"]["state"] == "asleep"
        await _switch(daemon, "alpha")
        activated = json.loads(await events.line_with("model_activated"))
        assert activated["to"] == "alpha"
        assert activated["from"] == "idle"


async def test_events_ends_when_the_daemon_stops(lab: Lab) -> None:
    await lab.add_backends("alpha")
    config = lab.config()
    async with contextlib.AsyncExitStack() as daemon:
        await daemon.enter_async_context(running_daemon(config))
        async with following("events", "--url", f"http://127.0.0.1:{config.port}") as events:
            await events.line_with("snapshot")
            await daemon.aclose()  # the daemon stops
            assert events.process.stderr is not None
            err = await asyncio.wait_for(events.process.stderr.read(), 30)
            assert await asyncio.wait_for(events.process.wait(), 30) == 0
            assert b"the daemon ended the event stream" in err


async def test_events_errors_are_one_line(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config(top='admin_token = "s3cret"')) as daemon:
        async with following("events", "--url", daemon.url) as events:
            assert events.process.stderr is not None
            err = (await asyncio.wait_for(events.process.stderr.read(), 30)).decode()
            assert await events.process.wait() == 1
            assert "HTTP 401: the admin token is required" in err
            assert "Traceback" not in err
        async with following("events", "--url", daemon.url, token="s3cret") as events:
            await events.line_with("snapshot")


async def test_status_watch_redraws_on_a_change(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    async with (
        running_daemon(lab.config()) as daemon,
        following("status", "--watch", "--url", daemon.url) as watch,
    ):
        await watch.line_with("group default: idle, active model: -")
        await _switch(daemon, "beta")
        await watch.line_with("group default: active, active model: beta")
        tables = [line for line in watch.lines if line.startswith("-- ")]
        assert len(tables) >= 2  # one per redraw, each headed by its time
        beta = await watch.line_with("beta")
        assert beta.split()[:2] == ["beta", "active"]


async def test_status_watch_reconnects_after_a_daemon_restart(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    config = lab.config()
    url = f"http://127.0.0.1:{config.port}"
    async with contextlib.AsyncExitStack() as first:
        await first.enter_async_context(running_daemon(config))
        async with following("status", "--watch", "--url", url) as watch:
            await watch.line_with("group default: idle, active model: -")
            await first.aclose()  # the daemon stops
            await watch.line_with("the daemon ended the event stream; trying again in 1s")
            async with running_daemon(config) as daemon:
                await _switch(daemon, "beta")
                await watch.line_with("group default: active, active model: beta")
            assert watch.process.returncode is None  # still watching


async def test_status_watch_ends_on_a_refusal(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with (
        running_daemon(lab.config(top='admin_token = "s3cret"')) as daemon,
        following("status", "--watch", "--url", daemon.url, token="wrong") as watch,
    ):
        assert watch.process.stderr is not None
        err = (await asyncio.wait_for(watch.process.stderr.read(), 30)).decode()
        assert await watch.process.wait() == 1
        assert "HTTP 401" in err
