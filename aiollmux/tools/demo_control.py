"""Start, stop and check detached demo backends through pidfiles (`demo-backend --detach`…).

These run as the default config's hooks on every switch, so this module imports
nothing heavy (no aiohttp): the server itself lives in `aiollmux.tools.demo_backend`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

KILL_WAIT_SECS: Final = 5.0
_POLL_SECS: Final = 0.02  # only where the OS offers no way to wait (no pidfd)
_MARKER: Final = b"demo-backend"  # in the command line of every demo backend process


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoSettings:
    model: str
    port: int
    host: str = "127.0.0.1"
    token_delay: float = 0.02
    load_secs: float = 0.0


class DemoControlError(Exception):
    """A detach/stop/check step failed; the message is one line for a hook's stderr."""


def default_pidfile(port: int) -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / f"aiollmux-demo-{os.getuid()}" / f"{port}.pid"


def check(settings: DemoSettings, pidfile: Path) -> None:
    """Return if the pidfile's backend runs and accepts connections; else say why."""
    pid = _read_pid(pidfile)
    if pid is None:
        if pidfile.exists():
            raise DemoControlError(f"not running: {pidfile} holds no process id")
        raise DemoControlError(f"not running: no pidfile at {pidfile}")
    if not is_running(pid):
        raise DemoControlError(f"not running: process {pid} named by {pidfile} is gone")
    if not _port_open(settings.host, settings.port):
        raise DemoControlError(
            f"demo backend {pid} is not answering on {settings.host}:{settings.port}"
        )


def detach(settings: DemoSettings, pidfile: Path, ready_timeout: float) -> int:
    """Start a backend in its own session; return its pid once it accepts connections.

    Idempotent: a backend that already runs and answers is left alone.
    """
    pid = _read_pid(pidfile)
    if pid is not None and is_running(pid):
        if _port_open(settings.host, settings.port):
            return pid
        stop(pidfile)  # a leftover of an interrupted wake that never listened: start afresh
    if _port_open(settings.host, settings.port):
        raise DemoControlError(
            f"port {settings.port} is already taken by another program; not starting"
        )
    pidfile.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = pidfile.with_suffix(".log")
    ready_read, ready_write = os.pipe()
    try:
        try:
            pid = _spawn(settings, log, ready_write)
        finally:
            os.close(ready_write)
        _write_pid(pidfile, pid)
        _wait_ready(pid, ready_read, ready_timeout, pidfile, log)
    finally:
        os.close(ready_read)
    return pid


def stop(pidfile: Path, timeout: float = 10.0) -> None:
    """Stop the pidfile's backend and return once it is gone (idempotent)."""
    pid = _read_pid(pidfile)
    if pid is not None and is_running(pid):
        _signal(pid, signal.SIGTERM)
        if not wait_gone(pid, timeout):
            _signal(pid, signal.SIGKILL)
            if not wait_gone(pid, KILL_WAIT_SECS):
                raise DemoControlError(f"demo backend {pid} did not exit after SIGKILL")
    pidfile.unlink(missing_ok=True)


def is_running(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) demo backend, not some process that reused it."""
    _reap(pid)
    proc = Path(f"/proc/{pid}")
    try:
        cmdline = (proc / "cmdline").read_bytes()
        state = (proc / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return not Path("/proc/self").exists() and _exists(pid)  # without procfs: kill(0)
    except OSError:
        return _exists(pid)
    if state == b"Z":
        return False
    # Empty only for a moment while the process is in exec: it cannot be judged, so it
    # counts as running (it may be a backend detach has just started).
    return not cmdline or _MARKER in cmdline


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited; False if it still runs after `timeout` seconds."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):
        return _poll_gone(pid, timeout)
    try:
        select.select([pidfd], [], [], timeout)  # readable once the process has exited
    finally:
        os.close(pidfd)
    return not is_running(pid)


def _poll_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECS)
    return True


def _spawn(settings: DemoSettings, log: Path, ready_fd: int) -> int:
    os.set_inheritable(ready_fd, True)
    argv = [
        sys.executable, "-m", "aiollmux", "demo-backend",
        "--model", settings.model, "--port", str(settings.port), "--host", settings.host,
        "--token-delay", str(settings.token_delay), "--load-secs", str(settings.load_secs),
        "--ready-fd", str(ready_fd),
    ]  # fmt: skip
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    # Its own session: the hook's process group may be killed, the backend must live on.
    return os.posix_spawn(sys.executable, argv, os.environ, file_actions=actions, setsid=True)


def _wait_ready(pid: int, ready_read: int, timeout: float, pidfile: Path, log: Path) -> None:
    """The child writes a line to the pipe once it listens and closes it when it exits."""
    readable, _, _ = select.select([ready_read], [], [], timeout)
    if readable and os.read(ready_read, 64):
        return
    pidfile.unlink(missing_ok=True)
    if not readable:
        _signal(pid, signal.SIGKILL)
        _reap(pid, block=True)
        raise DemoControlError(f"demo backend not ready after {timeout:g}s; see {log}")
    status = _reap(pid, block=True)
    raise DemoControlError(f"demo backend exited with status {status}; see {log}")


def _write_pid(pidfile: Path, pid: int) -> None:
    partial = pidfile.with_suffix(".pid.tmp")
    partial.write_text(f"{pid}\n")
    partial.replace(pidfile)  # readers never see a half-written pidfile


def _read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def _reap(pid: int, *, block: bool = False) -> int | None:
    """Collect our own exited child (detach's parent is us until it exits); its exit code."""
    try:
        done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done == pid else None


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
