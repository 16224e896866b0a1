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


class AdminError(Exception):
    """The daemon answered with an error, or could not be reached; one line."""


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
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        url = self.url.rstrip("/") + "/admin/events"
        try:
            async with session.get(url, headers=self._headers(), timeout=timeout) as response:
                if response.status >= 400:
                    text = await response.text()
                    raise AdminError(f"HTTP {response.status}: {_error_message(text)}")
                async for document in read_sse(response.content):
                    yield document
        except aiohttp.ClientError as exc:
            raise AdminError(f"cannot reach aiollmux at {self.url}: {exc}") from None

    async def print_events(self, out: TextIO, *, as_json: bool) -> None:
        """`aiollmux events`: one line per event until the daemon ends the stream."""
        async with aiohttp.ClientSession() as session:
            async for event in self.events(session):
                out.write((json.dumps(event) if as_json else event_line(event)) + "\n")
                out.flush()

    async def watch_status(self, out: TextIO, *, clear_screen: bool) -> None:
        """`aiollmux status --watch`: the table again on each change, at most once a second."""
        async with aiohttp.ClientSession() as session:
            changed = asyncio.Event()
            latest: list[dict[str, Any]] = []  # a snapshot's status, until another event

            async def follow() -> None:
                async for event in self.events(session):
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
                        return follower.result()  # the stream ended, or an AdminError
                    await asyncio.sleep(max(0.0, drawn + WATCH_EVERY_SECS - time.monotonic()))
                    changed.clear()
                    status = (
                        latest[0] if latest else await self.call(session, "GET", "/admin/status")
                    )
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
    return f"{when} {name:<18} {text}"


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
