"""Runs wake/sleep/alive hooks: `sh -c` in its own process group, with timeouts (docs/design.md §3).

A hook is done when its own process exits, even when a server it started in the
background still holds its output pipes; those are then drained in the background.
A killed hook's whole group is waited for, so no hook outlives its run or `close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiollmux.config import HookName, ModelConfig
from aiollmux.metrics import Metrics
from aiollmux.ratelimit import is_resource_error, log_resource_error

logger = logging.getLogger(__name__)

CAPTURE_BYTES = 64 * 1024
KILL_GRACE_SECS = 5.0
# SIGKILLed processes die as soon as they are scheduled, unless stuck in the kernel (a wedged
# GPU driver): wait that long for them, then go on rather than hang a switch for ever.
KILL_WAIT_SECS = 10.0
_READ_CHUNK: Final = 64 * 1024
# Linux's default ceiling for a pipe's capacity: everything a hook wrote before it exited fits,
# and a chatty background child cannot keep the post-exit drain going.
_EXIT_DRAIN_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class HookResult:
    model: str
    hook: HookName
    returncode: int | None
    timed_out: bool
    duration: float
    stdout: str
    stderr: str
    # It could not be started for want of a system resource (fds, memory, processes):
    # says nothing about the model (the health monitor does not count it as a failure).
    resource_exhausted: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """One line for logs and client errors: what failed and the tail of stderr."""
        name = f"{self.hook} hook of {self.model!r}"
        if self.timed_out:
            what = f"{name} timed out after {self.duration:.1f}s"
        elif self.returncode is None:
            what = f"{name} could not be started"
        elif self.returncode < 0:
            what = f"{name} was killed by signal {-self.returncode}"
        else:
            what = f"{name} exited with status {self.returncode}"
        tail = self.stderr.strip()[-1000:]
        return f"{what}: {tail}" if tail else what


class _Capture:
    """One output pipe of a hook, read as data arrives; keeps the last `CAPTURE_BYTES`.

    The pipe is ours rather than asyncio's: with `stdout=PIPE`, `Process.wait()` does not
    return until every holder of the pipe has closed it, so a hook that starts a server in
    the background would never finish.
    """

    def __init__(self) -> None:
        self._read_fd, self.write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self.buffer = bytearray()
        self.on_close: list[Callable[[], object]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def closed(self) -> bool:
        return self._read_fd < 0

    def start(self) -> None:
        self.close_write_end()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._read_fd, self._read_chunk)

    def close_write_end(self) -> None:
        # Once only the hook's processes hold it, EOF means all of them have let go.
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def _read_chunk(self) -> bool:
        """Read one chunk (one per wake-up, so a chatty child cannot hog the loop)."""
        try:
            chunk = os.read(self._read_fd, _READ_CHUNK)
        except BlockingIOError:
            return False
        if not chunk:
            self.close()
            return False
        self.buffer += chunk
        if len(self.buffer) > CAPTURE_BYTES:
            del self.buffer[:-CAPTURE_BYTES]
        return True

    def drain_written(self) -> None:
        """Take what the pipe holds now: once the hook has exited, all it wrote is in there."""
        budget = _EXIT_DRAIN_BYTES
        while budget > 0 and not self.closed and self._read_chunk():
            budget -= _READ_CHUNK

    def text(self) -> str:
        return self.buffer.decode("utf-8", errors="replace")

    def close(self) -> None:
        self.close_write_end()
        if self.closed:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._read_fd)
        os.close(self._read_fd)
        self._read_fd = -1
        for callback in self.on_close:
            callback()


# The daemon's own secret: never handed to hooks, nor to the servers they start.
WITHHELD_VARIABLES: Final = frozenset({"LLMUX_ADMIN_TOKEN"})


def daemon_environment(withheld: frozenset[str] = frozenset()) -> dict[str, str]:
    """What every command the daemon runs inherits: its environment minus its secrets."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in WITHHELD_VARIABLES and value not in withheld
    }


def hook_environment(
    model: ModelConfig, hook: HookName, withheld: frozenset[str] = frozenset()
) -> dict[str, str]:
    """The daemon's environment minus its secrets (`LLMUX_ADMIN_TOKEN`, and any variable
    whose value is one of `withheld`: the admin token and API keys), then the model's
    `[models.ID.env]` (which wins over the daemon's own, docs/design.md §14), plus the hook's."""
    env = daemon_environment(withheld)
    env.update(model.env)
    env["LLMUX_MODEL"] = model.id
    env["LLMUX_PORT"] = str(model.port)
    env["LLMUX_DEST_PORT"] = env["LLMUX_PORT"]  # llmux's name, so its hooks carry over
    env["LLMUX_HOOK"] = hook
    # Hooks may call `aiollmux` itself (the demo config does); make the running
    # installation findable even when the daemon was started by its full path.
    bin_dir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        env["PATH"] = f"{path}{os.pathsep}{bin_dir}" if path else bin_dir
    return env


class HookRunner:
    """Starts hook processes and guarantees none of them outlives `close()`."""

    def __init__(self, metrics: Metrics | None = None, *, kill_grace: float = KILL_GRACE_SECS):
        self.metrics = metrics
        self.kill_grace = kill_grace
        self._running: set[asyncio.subprocess.Process] = set()
        self._drains: set[_Capture] = set()
        self._closed = False
        self._withheld: frozenset[str] = frozenset()

    def withhold(self, secrets: Collection[str]) -> None:
        """Environment variables holding one of `secrets` are not passed to hooks."""
        self._withheld = frozenset(secret for secret in secrets if secret)

    @property
    def withheld(self) -> frozenset[str]:
        """The secret values no command the daemon runs may see (the free-memory probe too)."""
        return self._withheld

    @property
    def running(self) -> int:
        return len(self._running)

    async def run(
        self, model: ModelConfig, hook: HookName, cwd: Path, *, report: bool = True
    ) -> HookResult:
        """Run one hook. `report=False`: no metrics or log yet (the caller may find the
        result moot, an alive check overtaken by a switch, and `report()` it otherwise)."""
        started = time.monotonic()
        try:
            proc, out, err = await self._start_group(model, hook, cwd)
        except (OSError, ValueError) as error:  # ValueError: a NUL in an argument
            return self._reported(report, _not_started(model, hook, error, started))
        timed_out = await self._wait(proc, out, err, model.timeout(hook))
        result = HookResult(
            model=model.id,
            hook=hook,
            returncode=proc.returncode,
            timed_out=timed_out,
            duration=time.monotonic() - started,
            stdout=self._collect(out),
            stderr=self._collect(err),
        )
        return self._reported(report, result)

    async def _start_group(
        self, model: ModelConfig, hook: HookName, cwd: Path
    ) -> tuple[asyncio.subprocess.Process, _Capture, _Capture]:
        """`sh -c` in a process group of its own, with our output pipes; none left open
        if it cannot start."""
        captures: list[_Capture] = []
        try:
            # The pipes too: creating them is where running out of fds shows first.
            out = _Capture()
            captures.append(out)
            err = _Capture()
            captures.append(err)
            proc = await _spawn(model, hook, cwd, out, err, self._withheld)
        except BaseException:
            for capture in captures:
                capture.close()
            raise
        return proc, out, err

    async def _wait(
        self,
        proc: asyncio.subprocess.Process,
        out: _Capture,
        err: _Capture,
        limit_secs: float,
    ) -> bool:
        """Collect the output while the hook runs, until it exits or for `limit_secs` (then its
        group is terminated and reaped: True)."""
        out.start()
        err.start()
        self._running.add(proc)
        try:
            try:
                await asyncio.wait_for(proc.wait(), limit_secs)
            except TimeoutError:
                await self._terminate(proc)
                return True
            return False
        except BaseException:
            # Cancelled (or broken): nothing this hook started may outlive the run.
            _kill_group(proc, signal.SIGKILL)
            out.close()
            err.close()
            await _reap(proc)
            raise
        finally:
            self._running.discard(proc)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        _kill_group(proc, signal.SIGTERM)
        # The whole group, not only its leader, gets the grace period to shut down cleanly.
        if not await _group_exited(proc, self.kill_grace):
            _kill_group(proc, signal.SIGKILL)
        await _reap(proc)

    def _collect(self, capture: _Capture) -> str:
        capture.drain_written()
        text = capture.text()
        if not capture.closed:
            if self._closed:
                capture.close()
            else:
                # A background child (the server a wake hook started) still holds the pipe:
                # keep reading so its writes never block or fail, but do not wait for it.
                self._drains.add(capture)
                capture.on_close.append(functools.partial(self._drains.discard, capture))
        return text

    def _reported(self, report: bool, result: HookResult) -> HookResult:
        return self.report(result) if report else result

    def report(self, result: HookResult) -> HookResult:
        """Count `result` in the metrics and log it."""
        labels = {"model": result.model, "hook": result.hook}
        if self.metrics is not None:
            self.metrics.hook_duration.labels(**labels).observe(result.duration)
            if not result.ok:
                self.metrics.hook_failures.labels(**labels).inc()
            if result.timed_out:
                self.metrics.hook_timeouts.labels(**labels).inc()
        extra = {**labels, "duration": round(result.duration, 3), "returncode": result.returncode}
        if result.ok:
            level = logging.DEBUG if result.hook == "alive" else logging.INFO
            logger.log(
                level,
                "%s hook of %r finished in %.2fs",
                result.hook,
                result.model,
                result.duration,
                extra={"event": "hook_completed", **extra},
            )
        else:
            # A failing alive hook is often just an answer ("not running", at start-up);
            # the health monitor reports what it means (`model_lost`).
            level = logging.DEBUG if result.hook == "alive" else logging.WARNING
            event = "hook_timeout" if result.timed_out else "hook_failed"
            logger.log(level, "%s", result.describe(), extra={"event": event, **extra})
        if result.stdout.strip():
            logger.debug(
                "%s hook of %r stdout: %s", result.hook, result.model, result.stdout[-2000:]
            )
        if result.stderr.strip() and result.ok:
            logger.debug(
                "%s hook of %r stderr: %s", result.hook, result.model, result.stderr[-2000:]
            )
        return result

    def kill_all(self) -> None:
        """SIGKILL every running hook's process group at once, without waiting (forced exit)."""
        for proc in self._running:
            _kill_group(proc, signal.SIGKILL)

    async def close(self) -> None:
        """Kill every running hook's process group, wait for it, stop draining leftover pipes."""
        self._closed = True
        running = list(self._running)
        self.kill_all()
        await asyncio.gather(*(_reap(proc) for proc in running))
        for capture in list(self._drains):
            capture.close()


def _not_started(
    model: ModelConfig, hook: HookName, error: OSError | ValueError, started: float
) -> HookResult:
    exhausted = is_resource_error(error)
    if exhausted:
        log_resource_error(f"{hook} hook", error)
    return HookResult(
        model=model.id,
        hook=hook,
        returncode=None,
        timed_out=False,
        duration=time.monotonic() - started,
        stdout="",
        stderr=str(error),
        resource_exhausted=exhausted,
    )


async def _spawn(
    model: ModelConfig,
    hook: HookName,
    cwd: Path,
    out: _Capture,
    err: _Capture,
    withheld: frozenset[str],
) -> asyncio.subprocess.Process:
    spawning = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            "sh",
            "-c",
            model.hook(hook),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out.write_fd,
            stderr=err.write_fd,
            cwd=cwd,
            env=hook_environment(model, hook, withheld),
            start_new_session=True,
        )
    )
    try:
        return await asyncio.shield(spawning)
    except asyncio.CancelledError:
        # The process may exist already (asyncio would kill only its leader): kill its group.
        with contextlib.suppress(OSError):
            proc = await spawning
            _kill_group(proc, signal.SIGKILL)
            await _reap(proc)
        raise
    finally:
        out.close_write_end()
        err.close_write_end()


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """After SIGKILL to the group: wait (bounded) until all of it has died."""
    if not await _group_exited(proc, KILL_WAIT_SECS):
        logger.error("hook process group %d survived SIGKILL for %.0fs", proc.pid, KILL_WAIT_SECS)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_WAIT_SECS)


def _kill_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    # The hook is its group's leader (start_new_session), so its pid is the group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _can_watch_groups() -> bool:
    """Linux: members of a group are found in /proc and awaited through pidfds."""
    if not hasattr(os, "pidfd_open") or not os.path.isdir("/proc"):  # pragma: no cover
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # pragma: no cover - kernel older than 5.3
        return False
    return True


_CAN_WATCH_GROUPS: Final = _can_watch_groups()


async def _group_exited(proc: asyncio.subprocess.Process, seconds: float) -> bool:
    """Wait until every process in the hook's group has exited (zombies have); False on time-out.

    Without a way to see the group, wait for its leader and answer False: the caller
    then SIGKILLs the rest, whatever it is.
    """
    if not _CAN_WATCH_GROUPS:  # pragma: no cover
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), seconds)
        return False
    loop = asyncio.get_running_loop()
    exits: list[asyncio.Future[None]] = []
    pidfds: list[int] = []
    try:
        for pid in _live_members(proc.pid):
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # exited and reaped since the scan
            except OSError as exc:  # out of fds: wait for the leader; the caller SIGKILLs
                log_resource_error("hook process watch", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), seconds)
                return False
            pidfds.append(pidfd)
            if not _is_live_member(pid, proc.pid):
                continue  # exited since the scan (or, rarer still, its pid was reused)
            exited: asyncio.Future[None] = loop.create_future()
            loop.add_reader(pidfd, _resolve, exited)  # a pidfd turns readable at exit
            exits.append(exited)
        if not exits:
            return True
        _, pending = await asyncio.wait(exits, timeout=seconds)
        return not pending
    finally:
        for pidfd in pidfds:
            loop.remove_reader(pidfd)
            os.close(pidfd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _live_members(pgid: int) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _is_live_member(int(e), pgid)]


def _is_live_member(pid: int, pgid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return False
    # The command name in parentheses may contain anything; the fields after it cannot.
    state, _ppid, pgrp = stat[stat.rindex(b")") + 2 :].split()[:3]
    return int(pgrp) == pgid and state not in (b"Z", b"X")
