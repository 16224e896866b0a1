"""The admin API from the command line: `aiollmux status`, `switch`, `sleep` (docs/design.md §11).

Long calls (a switch runs hooks that may take minutes) show progress on stderr by
polling `/admin/status` while the call is under way.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

import aiohttp

PROGRESS_EVERY_SECS = 0.5
WATCH_EVERY_SECS = 1.0  # `status --watch` redraws at most this often
CLEAR_SCREEN = "\x1b[H\x1b[2J"
# The daemon sends a keep-alive every 15 s: a stream silent this long is a dead connection
# (a host that vanished, a NAT that forgot it), not an idle daemon.
STREAM_SILENCE_SECS = 35.0
WATCH_RETRY_MIN_SECS = 1.0  # `status --watch` reconnects after these, doubling, at most the max
WATCH_RETRY_MAX_SECS = 5.0


class AdminError(Exception):
    """The daemon answered with an error, or could not be reached; one line."""


class AdminRefused(AdminError):
    """The daemon answered the stream with an error (a wrong token): trying again is useless."""


@dataclass(frozen=True, slots=True)
class AdminClient:
    url: str
    token: str | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def call(
        self, session: aiohttp.ClientSession, method: str, path: str, body: object = None
    ) -> dict[str, Any]:
        try:
            async with session.request(
                method, self.url.rstrip("/") + path, json=body, headers=self._headers()
            ) as response:
                text = await response.text()
                status = response.status
        except aiohttp.ClientError as exc:
            raise AdminError(f"cannot reach aiollmux at {self.url}: {exc}") from None
        try:
            document = json.loads(text)
        except ValueError:
            raise AdminError(f"HTTP {status} from {self.url}: {text[:200]}") from None
        if status >= 400 or not isinstance(document, dict):
            message = document.get("error", {}).get("message") if status >= 400 else None
            raise AdminError(f"HTTP {status}: {message or text[:200]}")
        return document

    async def events(self, session: aiohttp.ClientSession) -> AsyncIterator[dict[str, Any]]:
        """Follow `GET /admin/events`: each event's object, until the daemon ends the stream."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=STREAM_SILENCE_SECS)
        url = self.url.rstrip("/") + "/admin/events"
        try:
            async with session.get(url, headers=self._headers(), timeout=timeout) as response:
                if response.status >= 400:
                    text = await response.text()
                    raise AdminRefused(f"HTTP {response.status}: {_error_message(text)}")
                async for document in read_sse(response.content):
                    yield document
        except aiohttp.ServerTimeoutError:
            raise AdminError(
                f"nothing heard from aiollmux at {self.url} for {STREAM_SILENCE_SECS:g}s"
                " (the connection is dead)"
            ) from None
        except aiohttp.ClientError as exc:
            raise AdminError(f"cannot reach aiollmux at {self.url}: {exc}") from None

    async def print_events(self, out: TextIO, *, as_json: bool) -> None:
        """`aiollmux events`: one line per event until the daemon ends the stream."""
        async with aiohttp.ClientSession() as session:
            async for event in self.events(session):
                out.write((json.dumps(event) if as_json else event_line(event)) + "\n")
                out.flush()

    async def watch_status(self, out: TextIO, *, clear_screen: bool) -> None:
        """`aiollmux status --watch`: the table again on each change, at most once a second;
        after a daemon restart (or while it is unreachable) it reconnects with back-off,
        saying so; only a refusal (a wrong token) ends it, with an AdminError."""
        async with aiohttp.ClientSession() as session:
            wait = WATCH_RETRY_MIN_SECS
            while True:
                try:
                    if await self._watch_stream(session, out, clear_screen=clear_screen):
                        wait = WATCH_RETRY_MIN_SECS  # it was connected: a fresh start
                    problem = "the daemon ended the event stream"
                except AdminRefused:
                    raise
                except AdminError as error:
                    problem = str(error)
                out.write(f"-- {time.strftime('%H:%M:%S')} {problem}; trying again in {wait:g}s\n")
                out.flush()
                await asyncio.sleep(wait)
                wait = min(wait * 2, WATCH_RETRY_MAX_SECS)

    async def _watch_stream(
        self, session: aiohttp.ClientSession, out: TextIO, *, clear_screen: bool
    ) -> bool:
        """Redraw on each event of one stream until it ends; whether any event came."""
        changed = asyncio.Event()
        latest: list[dict[str, Any]] = []  # a snapshot's status, until another event
        heard = False

        async def follow() -> None:
            nonlocal heard
            async for event in self.events(session):
                heard = True
                latest[:] = [event["status"]] if event["event"] == "snapshot" else []
                changed.set()

        follower = asyncio.create_task(follow())
        drawn = -WATCH_EVERY_SECS
        try:
            while True:
                waiter = asyncio.create_task(changed.wait())
                await asyncio.wait({follower, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if follower.done():
                    follower.result()  # the stream ended, or an AdminError
                    return heard
                await asyncio.sleep(max(0.0, drawn + WATCH_EVERY_SECS - time.monotonic()))
                changed.clear()
                status = latest[0] if latest else await self.call(session, "GET", "/admin/status")
                heading = CLEAR_SCREEN if clear_screen else f"-- {time.strftime('%H:%M:%S')}\n"
                out.write(heading + render_status(status) + "\n")
                out.flush()
                drawn = time.monotonic()
        finally:
            follower.cancel()

    async def status(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            return await self.call(session, "GET", "/admin/status")

    async def act(self, path: str, body: dict[str, Any], progress: TextIO | None) -> dict[str, Any]:
        """POST an admin action; while it runs, report model states on `progress`."""
        async with aiohttp.ClientSession() as session:
            action = asyncio.create_task(self.call(session, "POST", path, body))
            started = time.monotonic()
            last = ""
            while not action.done():
                await asyncio.wait({action}, timeout=PROGRESS_EVERY_SECS)
                if action.done() or progress is None:
                    break
                try:
                    snapshot = await self.call(session, "GET", "/admin/status")
                except AdminError:
                    continue
                line = _progress_line(snapshot)
                if line != last:
                    elapsed = time.monotonic() - started
                    progress.write(f"  {line} ({elapsed:.1f}s)\n")
                    progress.flush()
                    last = line
            return await action


def _error_message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text[:200]


async def read_sse(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a Server-Sent Events body (comments, the keep-alives, skipped).
    Split by hand: a snapshot can be a longer line than aiohttp's readline allows."""
    pending = b""
    data: list[str] = []
    async for chunk in content.iter_any():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8").removesuffix("\r")
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line and data:
                document = json.loads("\n".join(data))
                data = []
                if isinstance(document, dict):
                    yield document


def event_line(event: dict[str, Any]) -> str:
    """One readable line for an event of the stream (local time)."""
    when = datetime.fromisoformat(str(event.get("ts"))).astimezone().strftime("%H:%M:%S.%f")[:-3]
    name = str(event.get("event"))
    if name == "snapshot":
        status = event.get("status", {})
        groups = ", ".join(
            f"{group} {info.get('state')} ({info.get('active_model') or 'none awake'})"
            for group, info in status.get("groups", {}).items()
        )
        text = f"{len(status.get('models', {}))} models; {groups}"
    elif name == "requests":
        counts = ", ".join(f"{code}: {n}" for code, n in event.get("by_status", {}).items())
        text = f"{event.get('model')}: {event.get('count')} ({counts})"
    elif name == "dropped":
        text = f"{event.get('count')} events not delivered (this reader was too slow)"
    else:
        text = str(event.get("message", ""))
    if name == "requests" and event.get("errors"):
        text += " errors: " + ", ".join(f"{k}: {n}" for k, n in event["errors"].items())
    return _one_line(f"{when} {name:<18} {text}")


def _one_line(text: str) -> str:
    """Control characters (a newline in a hook's output, an escape sequence) shown escaped:
    one event stays one line, and nothing the daemon relays can drive the terminal."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def _progress_line(status: dict[str, Any]) -> str:
    busy = [
        f"{name} {info['state']}"
        for name, info in status.get("models", {}).items()
        if info.get("state") in ("waking", "sleeping", "draining")
    ]
    return ", ".join(busy) or f"state {status.get('state')}"


def render_status(status: dict[str, Any]) -> str:
    """A readable table of `/admin/status`."""
    lines = []
    for name, group in status.get("groups", {}).items():
        active = group.get("active_model") or "-"
        switching = group.get("switching")
        extra = (
            f" ({switching['from'] or 'idle'} -> {switching['to'] or 'idle'})" if switching else ""
        )
        lines.append(f"group {name}: {group.get('state')}{extra}, active model: {active}")
        if group.get("memory_gb") is not None:
            awake = ", ".join(group.get("active_models") or []) or "none"
            used = _gb(group.get("memory_used_gb"))
            lines.append(f"  memory: {used} of {_gb(group['memory_gb'])} GB used (awake: {awake})")
    config = status.get("config", {})
    lines.append(f"config: {config.get('path')} (generation {config.get('generation')})")
    if config.get("restart_required"):
        lines.append("  host/port changed: restart aiollmux to apply")
    if config.get("last_reload_error"):
        lines.append(f"  last reload failed: {config['last_reload_error']}")
    costs: dict[str, float] = {}
    for entry in status.get("switch_costs", []):
        costs[entry["to"]] = max(costs.get(entry["to"], 0.0), float(entry["seconds"]))
    rows = [("MODEL", "STATE", "PORT", "IN-FLIGHT", "QUEUED", "SWITCH COST", "GROUP", "MEMORY")]
    for name, info in status.get("models", {}).items():
        cost = f"{costs[name]:.1f}s" if name in costs else "-"
        state = f"{info['state']} (removed)" if info.get("removed") else str(info["state"])
        memory = "-" if info.get("memory_gb") is None else f"{_gb(info['memory_gb'])} GB"
        rows.append(
            (name, state, str(info["port"]), str(info["in_flight"]),
             str(info["queued"]), cost, str(info["group"]), memory)
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("")
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]  # fmt: skip
    return "\n".join(lines)


def _gb(value: Any) -> str:
    return "-" if value is None else f"{float(value):g}"


def run_sync(coroutine: Any) -> Any:
    try:
        return asyncio.run(coroutine)
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        sys.exit(130)
