"""The `free_memory` probe of a group with a memory budget (docs/design.md §8).

Before a wake, the group's `free_memory` command (`sh -c`, env `LLMUX_GROUP`) must print at
least the target's `memory_gb` in GiB; it is re-run every 0.5 s until it does or the
group's `free_memory_timeout_secs` pass. It catches backends whose sleep returns before the
GPU memory is really released.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from aiollmux.hooks import daemon_environment

POLL_SECS = 0.5
_RUN_LIMIT_SECS = 10.0  # one run of the command; a hung nvidia-smi must not hang the wake
_OUTPUT_BYTES = 4096
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True, slots=True)
class Reading:
    free_gb: float | None  # None: the command failed or printed no number
    detail: str  # what it printed or why it failed, for the error message


async def wait_for_free_memory(
    command: str,
    *,
    group: str,
    needed_gb: float,
    within: float,
    cwd: Path,
    withheld: frozenset[str] = frozenset(),
) -> str | None:
    """Poll until `command` reports `needed_gb` free; None then, else the failure message."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        reading = await read_free_memory(
            command, group=group, cwd=cwd, limit=min(_RUN_LIMIT_SECS, within), withheld=withheld
        )
        if reading.free_gb is not None and reading.free_gb >= needed_gb:
            return None
        if loop.time() + POLL_SECS > deadline:
            free = "unknown" if reading.free_gb is None else f"{reading.free_gb:g} GiB"
            return (
                f"free_memory of group {group!r}: {needed_gb:g} GiB needed, {free} free after "
                f"{within:g}s ({reading.detail})"
            )
        await asyncio.sleep(POLL_SECS)


async def read_free_memory(
    command: str,
    *,
    group: str,
    cwd: Path,
    limit: float,
    withheld: frozenset[str] = frozenset(),
) -> Reading:
    """Run the command once, in its own process group (killed whole on timeout or cancel)."""
    # The daemon's secrets never reach it, as for hooks (docs/design.md §5).
    env = daemon_environment(withheld)
    env["LLMUX_GROUP"] = group
    try:
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return Reading(None, f"could not start: {exc.strerror or exc}")
    try:
        async with asyncio.timeout(limit):
            stdout, stderr = await proc.communicate()
    except TimeoutError:
        return Reading(None, f"timed out after {limit:g}s")
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    out = stdout[:_OUTPUT_BYTES].decode(errors="replace").strip()
    if proc.returncode != 0:
        tail = stderr[-_OUTPUT_BYTES:].decode(errors="replace").strip()[-200:]
        return Reading(None, f"exited with status {proc.returncode}: {tail or out[:200]}")
    match = _NUMBER.search(out)
    if match is None:
        return Reading(None, f"printed no number: {out[:200]!r}")
    return Reading(float(match.group()), f"printed {out[:200]!r}")
