"""The CLI's stream client: a dead connection is noticed, each event stays one line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from aiollmux.tools import admin_client
from aiollmux.tools.admin_client import AdminClient, AdminError, event_line

TS = "2026-12-07T08:00:00.000+00:00"


@pytest.fixture
async def silent_daemon() -> AsyncIterator[str]:
    """A daemon that sends the snapshot and then nothing, not even keep-alives (as a
    connection that died without a FIN looks to the client)."""
    release = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: snapshot\ndata: {"event": "snapshot", "status": {}}\n\n')
        await release.wait()
        return response

    app = web.Application()
    app.router.add_get("/admin/events", events)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        release.set()
        await runner.cleanup()


async def test_a_silent_stream_is_a_dead_connection(
    silent_daemon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_client, "STREAM_SILENCE_SECS", 0.3)
    seen: list[str] = []

    async def follow() -> None:
        async with aiohttp.ClientSession() as session, asyncio.timeout(30):
            # Without the read timeout this fails on the 30 s bound instead of hanging.
            async for event in AdminClient(silent_daemon).events(session):
                seen.append(event["event"])

    with pytest.raises(AdminError, match=r"nothing heard from aiollmux .* for 0.3s"):
        await follow()
    assert seen == ["snapshot"]


def test_an_event_line_is_one_line_whatever_the_message_holds() -> None:
    line = event_line(
        {"event": "hook_failed", "ts": TS, "message": "wake failed:\nline two\x1b[2J\ttab"}
    )
    assert "\n" not in line
    assert "\x1b" not in line
    assert line.endswith("wake failed:\\nline two\\x1b[2J\\ttab")


def test_an_event_line_shows_the_errors_of_a_summary() -> None:
    line = event_line(
        {
            "event": "requests",
            "ts": TS,
            "model": "a",
            "count": 3,
            "by_status": {"502": 3},
            "errors": {"backend_error": 3},
        }
    )
    assert line.endswith("a: 3 (502: 3) errors: backend_error: 3")
