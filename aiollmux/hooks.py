"""Runs wake/sleep/alive hooks: `sh -c` in its own process group, with timeouts (DESIGN §3).

A hook is done when its own process exits, even when a server it started in the
background still holds the pipes; those pipes are then drained in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aiollmux.config import HookName, ModelConfig
from aiollmux.metrics import Metrics

logger = logging.getLogger(__name__)

CAPTURE_BYTES = 64 * 1024
KILL_GRACE_SECS = 5.0
# Output written before the hook exited is already in the pipe; give the loop a moment
# to read it before a background child that keeps the pipe open makes us stop waiting.
_OUTPUT_GRACE_SECS = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class HookResult:
    model: str
    hook: HookName
    returncode: int | None
    timed_out: bool
    duration: float
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """One line for logs and client errors: what failed and the tail of stderr."""
        if self.timed_out:
            what = f"{self.hook} hook of {self.model!r} timed out after {self.duration:.1f}s"
        elif self.returncode is not None and self.returncode < 0:
            what = f"{self.hook} hook of {self.model!r} was killed by signal {-self.returncode}"
        else:
            what = f"{self.hook} hook of {self.model!r} exited with status {self.returncode}"
        tail = self.stderr.strip()[-1000:]
        return f"{what}: {tail}" if tail else what


class _Capture:
    """Keeps the last `CAPTURE_BYTES` of a stream; reads until EOF."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def read_all(self) -> None:
        while chunk := await self.stream.read(65536):
            self.buffer += chunk
            if len(self.buffer) > CAPTURE_BYTES:
                del self.buffer[: len(self.buffer) - CAPTURE_BYTES]

    def text(self) -> str:
        return self.buffer.decode("utf-8", errors="replace")


def hook_environment(model: ModelConfig, hook: HookName) -> dict[str, str]:
    env = dict(os.environ)
    env["LLMUX_MODEL"] = model.id
    env["LLMUX_PORT"] = str(model.port)
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
        self._drainers: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._running)

    async def run(self, model: ModelConfig, hook: HookName, cwd: Path) -> HookResult:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            model.hook(hook),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=hook_environment(model, hook),
            start_new_session=True,
        )
        self._running.add(proc)
        assert proc.stdout is not None
        assert proc.stderr is not None
        out, err = _Capture(proc.stdout), _Capture(proc.stderr)
        readers = [asyncio.create_task(out.read_all()), asyncio.create_task(err.read_all())]
        timed_out = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), model.timeout(hook))
            except TimeoutError:
                timed_out = True
                await self._terminate(proc)
        except BaseException:
            _kill_group(proc, signal.SIGKILL)
            for reader in readers:
                reader.cancel()
            raise
        finally:
            self._running.discard(proc)
        await self._collect(readers)
        result = HookResult(
            model=model.id,
            hook=hook,
            returncode=proc.returncode,
            timed_out=timed_out,
            duration=time.monotonic() - started,
            stdout=out.text(),
            stderr=err.text(),
        )
        self._report(result)
        return result

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        _kill_group(proc, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), self.kill_grace)
        # Children may ignore SIGTERM after their leader is gone: the group goes in any case.
        _kill_group(proc, signal.SIGKILL)
        await proc.wait()

    async def _collect(self, readers: list[asyncio.Task[None]]) -> None:
        _, pending = await asyncio.wait(readers, timeout=_OUTPUT_GRACE_SECS)
        for task in pending:
            # A background child holds the pipe: keep draining it so its writes never
            # block or fail, but do not wait for it.
            self._drainers.add(task)
            task.add_done_callback(self._drainers.discard)

    def _report(self, result: HookResult) -> None:
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
        elif result.timed_out:
            logger.warning("%s", result.describe(), extra={"event": "hook_timeout", **extra})
        else:
            logger.warning("%s", result.describe(), extra={"event": "hook_failed", **extra})
        if result.stdout.strip():
            logger.debug(
                "%s hook of %r stdout: %s", result.hook, result.model, result.stdout[-2000:]
            )
        if result.stderr.strip() and result.ok:
            logger.debug(
                "%s hook of %r stderr: %s", result.hook, result.model, result.stderr[-2000:]
            )

    async def close(self) -> None:
        """Kill every running hook's process group and stop draining leftover pipes."""
        for proc in list(self._running):
            _kill_group(proc, signal.SIGKILL)
        for task in list(self._drainers):
            task.cancel()
        if self._drainers:
            await asyncio.gather(*self._drainers, return_exceptions=True)


def _kill_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    # The hook is its group's leader (start_new_session), so its pid is the group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
