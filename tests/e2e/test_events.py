"""`GET /admin/events` against the real daemon: snapshot first, the events of a switch in
order, request summaries, a reader that never reads, auth, reload, shutdown, many readers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web

from aiollmux.app import EVENTS, build_app
from aiollmux.config import load_config
from aiollmux.events import CLOSE_GRACE_SECS, QUEUE_LIMIT
from aiollmux.server import make_runner
from aiollmux.tools.admin_client import read_sse
from tests.support import (
    Daemon,
    Lab,
    daemon_process,
    running_daemon,
    wait_for,
    without_model,
)

NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)


class Stream:
    """One reader of the event stream, as a client sees it."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._events = read_sse(response.content)
        self.seen: list[dict[str, Any]] = []

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(20):
            event = await anext(self._events)
        self.seen.append(event)
        return event

    async def until(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """Every event up to and including the first `name` with these fields."""
        got = []
        while True:
            event = await self.next()
            got.append(event)
            if event["event"] == name and all(event.get(k) == v for k, v in fields.items()):
                return got


@asynccontextmanager
async def stream(daemon: Daemon, token: str | None = None) -> AsyncIterator[Stream]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with daemon.client.get(
        f"{daemon.url}/admin/events", headers=headers, timeout=NO_TIMEOUT
    ) as response:
        assert response.status == 200, await response.text()
        yield Stream(response)


async def to_the_end(events: Stream) -> list[dict[str, Any]]:
    """Every event up to the end of the stream (which must come within a while)."""
    got = []
    with contextlib.suppress(StopAsyncIteration):
        while True:
            got.append(await events.next())
    return got


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


async def test_snapshot_first_then_a_switch_in_order(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    async with running_daemon(lab.config()) as daemon, stream(daemon) as events:
        assert events.response.headers["Content-Type"] == "text/event-stream"
        first = await events.next()
        assert first["event"] == "snapshot"
        assert first["status"] == await daemon.status() | {"runtime": first["status"]["runtime"]}
        datetime.fromisoformat(first["ts"])
        async with daemon.client.post(f"{daemon.url}/admin/switch", json={"model": "alpha"}) as r:
            assert r.status == 200
        got = await events.until("model_activated", to="alpha")
        assert names(got) == ["switch_started", "hook_completed", "model_activated"]
        assert got[0]["from"] == "idle"
        assert got[0]["group"] == "default"
        assert got[1]["hook"] == "wake"
        assert got[1]["model"] == "alpha"
        assert isinstance(got[1]["duration"], float)
        response = await daemon.chat("beta")
        assert response.status == 200
        got = await events.until("model_activated", to="beta")
        steps = [(e["event"], e.get("hook"), e.get("model")) for e in got]
        assert [step for step in steps if step[0] != "requests"] == [
            ("switch_started", None, None),
            ("hook_completed", "sleep", "alpha"),
            ("hook_completed", "wake", "beta"),
            ("model_activated", None, None),
        ]  # fmt: skip
        for event in got:  # the JSON log's fields, plus ts
            assert {"ts", "level", "logger", "message"} <= set(event)
            datetime.fromisoformat(event["ts"])


async def test_the_sse_event_line_names_the_event(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        async with daemon.client.get(f"{daemon.url}/admin/events", timeout=NO_TIMEOUT) as response:
            head = await response.content.readuntil(b"\n\n")
        lines = head.decode().splitlines()
        assert lines[0] == "event: snapshot"
        assert json.loads(lines[1].removeprefix("data: "))["event"] == "snapshot"


async def test_requests_are_summarised_not_one_event_each(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon, stream(daemon) as events:
        await events.next()
        loop = asyncio.get_running_loop()
        started = loop.time()
        statuses = [200] * 25 + [404] * 5
        for status in statuses:
            response = await daemon.chat("alpha", status=status)
            assert response.status == status
        elapsed = loop.time() - started
        summaries: list[dict[str, Any]] = []
        while sum(s["count"] for s in summaries) < len(statuses):
            event = await events.next()
            if event["event"] == "requests":
                summaries.append(event)
        by_status: dict[str, int] = {}
        for summary in summaries:
            assert summary["model"] == "alpha"
            assert summary["count"] == sum(summary["by_status"].values())
            for code, n in summary["by_status"].items():
                by_status[code] = by_status.get(code, 0) + n
        assert by_status == {"200": 25, "404": 5}
        # At most one a second: never more summaries than seconds the traffic took, plus one.
        assert len(summaries) <= int(elapsed) + 1
        assert "requests" not in names(events.seen[: events.seen.index(summaries[0])])


async def test_a_reader_that_never_reads_costs_bounded_memory(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        hub = daemon.app[EVENTS]
        async with await daemon.chat("alpha") as warm_up:  # the switch, out of the timing
            assert warm_up.status == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = await asyncio.gather(*(daemon.chat("alpha") for _ in range(200)))
        assert [a.status for a in answers] == [200] * 200
        alone = loop.time() - started
        port = int(daemon.url.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /admin/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        await wait_for(lambda: hub.readers == 1)
        # Fat events fill the socket buffers fast; then the reader's queue fills up.
        noise = logging.getLogger("aiollmux.tests")
        published = 0
        while not any(dropped for _, dropped in hub.backlog()):
            noise.info("%s", "x" * 20_000, extra={"event": "test_noise"})
            published += 1
            await asyncio.sleep(0)  # let the writer run, as a daemon would between events
        for _ in range(500):
            noise.info("%s", "x" * 20_000, extra={"event": "test_noise"})
        published += 500
        [(queued, dropped)] = hub.backlog()
        assert queued == QUEUE_LIMIT
        assert dropped > 0
        [stuck_reader] = list(hub._readers)
        started = loop.time()
        # The client never reads: a request that waited on its stream would never end, so
        # the bound is only there to fail instead of hanging.
        async with asyncio.timeout(120):
            answers = await asyncio.gather(*(daemon.chat("alpha") for _ in range(200)))
        assert [a.status for a in answers] == [200] * 200
        beside = loop.time() - started
        # The 200 requests' summary was offered to the stuck reader and dropped, while its
        # stream stays parked in a write that can never finish: nothing waited for it.
        await wait_for(lambda: stuck_reader.dropped > dropped)
        assert stuck_reader.queued == QUEUE_LIMIT  # bounded, whatever happened meanwhile
        assert stuck_reader.task is not None
        assert not stuck_reader.task.done()
        print(f"200 requests: {alone:.2f}s alone, {beside:.2f}s beside a stuck reader")
        writer.close()
        await writer.wait_closed()


async def test_a_slow_reader_is_told_what_it_missed(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        hub = daemon.app[EVENTS]
        async with daemon.client.get(f"{daemon.url}/admin/events", timeout=NO_TIMEOUT) as response:
            await wait_for(lambda: hub.readers == 1)
            noise = logging.getLogger("aiollmux.tests")
            sent = 0
            # Published in one go, faster than any write: the queue overflows.
            while not any(dropped for _, dropped in hub.backlog()):
                noise.info("noise %d", sent, extra={"event": "test_noise", "n": sent})
                sent += 1
            for _ in range(99):
                noise.info("noise %d", sent, extra={"event": "test_noise", "n": sent})
                sent += 1
            events = Stream(response)
            reading = asyncio.create_task(events.until("test_last"))
            await wait_for(lambda: hub.backlog() == [(0, 0)])  # the gap is on its way
            noise.info("last", extra={"event": "test_last"})
            got = await reading
        kinds = names(got)
        assert kinds[0] == "snapshot"
        gap = kinds.index("dropped")
        assert kinds[gap + 1] == "snapshot"  # a fresh picture after the gap
        delivered = kinds.count("test_noise")
        assert got[gap]["count"] == sent - delivered
        assert delivered <= QUEUE_LIMIT


async def test_admin_rules_apply(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config(top='admin_token = "s3cret"')) as daemon:
        url = f"{daemon.url}/admin/events"
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with daemon.client.get(url, headers=headers) as response:
                assert response.status == 401
                body = await response.json()
                assert body["error"]["code"] == "unauthorized"
        async with stream(daemon, token="s3cret") as events:
            assert (await events.next())["event"] == "snapshot"


async def test_a_reload_keeps_the_stream_and_sends_a_fresh_snapshot(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    path = lab.tmp / "llmux.toml"
    text = lab.config_text()
    path.write_text(without_model(text, "beta"))
    async with running_daemon(load_config(path)) as daemon, stream(daemon) as events:
        first = await events.next()
        assert sorted(first["status"]["models"]) == ["alpha"]
        path.write_text(text)
        async with daemon.client.post(f"{daemon.url}/admin/reload") as reload:
            assert reload.status == 200
        got = await events.until("snapshot")
        assert names(got)[-2:] == ["config_reloaded", "snapshot"]
        assert got[-2]["generation"] == 2
        assert sorted(got[-1]["status"]["models"]) == ["alpha", "beta"]


async def test_many_readers_see_the_same_events(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        responses = [
            await daemon.client.get(f"{daemon.url}/admin/events", timeout=NO_TIMEOUT)
            for _ in range(20)
        ]
        readers = [Stream(r) for r in responses]
        for reader in readers:
            assert (await reader.next())["event"] == "snapshot"
        async with daemon.client.post(f"{daemon.url}/admin/switch", json={"model": "alpha"}) as r:
            assert r.status == 200
        seen = [names(await reader.until("model_activated")) for reader in readers]
        assert seen == [["switch_started", "hook_completed", "model_activated"]] * 20
        for response in responses:
            response.close()
        await wait_for(lambda: daemon.app[EVENTS].readers == 0)


async def test_heartbeats_keep_an_idle_stream_open(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        daemon.app[EVENTS].heartbeat_secs = 0.05
        async with daemon.client.get(f"{daemon.url}/admin/events", timeout=NO_TIMEOUT) as response:
            await response.content.readuntil(b"\n\n")  # the snapshot
            assert await response.content.readuntil(b"\n\n") == b": keep-alive\n\n"


async def test_shutdown_closes_streams_at_once(lab: Lab) -> None:
    """A reader's stream ends cleanly; one that reads nothing cannot hold the shutdown."""
    await lab.add_backends("alpha")
    config = lab.config()
    app = build_app(config)
    runner = make_runner(app, shutdown_timeout=30, keepalive_timeout=config.keepalive_timeout_secs)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", config.port).start()
    url = f"http://127.0.0.1:{config.port}"
    hub = app[EVENTS]
    _, stuck = await asyncio.open_connection("127.0.0.1", config.port)
    stuck.write(b"GET /admin/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    async with aiohttp.ClientSession() as client:
        response = await client.get(f"{url}/admin/events", timeout=NO_TIMEOUT)
        reading = asyncio.create_task(response.read())  # to the end: EOF, not a hang
        await wait_for(lambda: hub.readers == 2)
        noise = logging.getLogger("aiollmux.tests")
        while not any(dropped for _, dropped in hub.backlog()):
            noise.info("%s", "x" * 20_000, extra={"event": "test_noise"})
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await runner.cleanup()
        took = loop.time() - started
        body = await reading  # complete: a chunked body cut short would raise here
        response.close()
    stuck.close()
    await stuck.wait_closed()
    # The stuck stream is cut after CLOSE_GRACE_SECS; the rest of the shutdown is quick. The
    # margin is for a loaded machine and far below shutdown_timeout (30 s), which a stream
    # holding the shutdown would reach.
    assert took < CLOSE_GRACE_SECS + 10, f"shutdown waited {took:.1f}s for event streams"
    assert hub.readers == 0
    assert body.startswith(b"event: snapshot\n")
    print(f"shutdown with a stuck and a reading stream took {took:.2f}s")


async def test_the_daemon_process_ends_streams_on_sigterm(lab: Lab) -> None:
    await lab.add_backends("alpha")
    config_file = lab.tmp / "llmux.toml"
    config_file.write_text(lab.config_text())
    async with daemon_process(config_file) as daemon, aiohttp.ClientSession() as client:
        async with client.get(f"{daemon.url}/admin/events", timeout=NO_TIMEOUT) as response:
            events = Stream(response)
            assert (await events.next())["event"] == "snapshot"
            daemon.process.send_signal(signal.SIGTERM)
            assert (await events.next())["event"] == "shutting_down"
            assert await response.content.read() == b""
        assert await asyncio.wait_for(daemon.process.wait(), 30) == 0


async def test_a_changed_admin_token_ends_the_streams_opened_with_the_old_one(lab: Lab) -> None:
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    path.write_text(lab.config_text(top='admin_token = "old"'))
    async with running_daemon(load_config(path)) as daemon, stream(daemon, "old") as events:
        assert (await events.next())["event"] == "snapshot"
        async with daemon.client.get(f"{daemon.url}/admin/events", timeout=NO_TIMEOUT) as bare:
            assert bare.status == 401  # loopback without a token: not while a token is set
        path.write_text(lab.config_text(top='admin_token = "new"'))
        reload = await daemon.client.post(
            f"{daemon.url}/admin/reload", headers={"Authorization": "Bearer old"}
        )
        assert reload.status == 200
        # The stream ends: the config's events and its new snapshot are not for this reader.
        assert {"config_reloaded", "snapshot"}.isdisjoint(names(await to_the_end(events)))
        async with stream(daemon, "new") as fresh:  # the new token is let in
            assert (await fresh.next())["event"] == "snapshot"
        old = await daemon.client.get(
            f"{daemon.url}/admin/events", headers={"Authorization": "Bearer old"}
        )
        assert old.status == 401
        await wait_for(lambda: daemon.app[EVENTS].readers == 0)


async def test_setting_an_admin_token_ends_the_loopback_streams_without_one(lab: Lab) -> None:
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    path.write_text(lab.config_text())
    async with (
        running_daemon(load_config(path)) as daemon,
        stream(daemon) as bare,
        stream(daemon, "s3cret") as holder,
    ):
        assert (await bare.next())["event"] == "snapshot"
        assert (await holder.next())["event"] == "snapshot"
        path.write_text(lab.config_text(top='admin_token = "s3cret"'))
        async with daemon.client.post(f"{daemon.url}/admin/reload") as reload:
            assert reload.status == 200
        assert {"config_reloaded", "snapshot"}.isdisjoint(names(await to_the_end(bare)))
        # The reader that presented the (now required) token keeps its stream.
        assert names(await holder.until("snapshot"))[-2:] == ["config_reloaded", "snapshot"]
