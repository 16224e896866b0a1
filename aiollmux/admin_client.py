"""The admin API from the command line: `aiollmux status`, `switch`, `sleep` (DESIGN §11).

Long calls (a switch runs hooks that may take minutes) show progress on stderr by
polling `/admin/status` while the call is under way.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp

PROGRESS_EVERY_SECS = 0.5


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
