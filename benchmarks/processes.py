"""The benchmark's child processes: start them pinned to a CPU, read their /proc numbers, and
make sure none outlives the run (each leads its own process group, killed as a whole).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

STOP_GRACE_SECS = 5.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class Pinning:
    """Where things run: load generator and backend on one CPU, the proxy under test on another."""

    mode: Literal["taskset", "affinity", "none"]
    load_cpu: int | None = None
    proxy_cpu: int | None = None

    @classmethod
    def choose(cls, enabled: bool) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not enabled or len(cpus) < 2:
            return cls("none")
        mode: Literal["taskset", "affinity"] = "taskset" if shutil.which("taskset") else "affinity"
        return cls(mode, load_cpu=cpus[0], proxy_cpu=cpus[1])

    def describe(self) -> str:
        if self.mode == "none":
            return "none (fewer than 2 CPUs, or --no-pin): numbers mix load and proxy"
        how = "taskset -c" if self.mode == "taskset" else "sched_setaffinity"
        return (
            f"{how}: load generator + backend on CPU {self.load_cpu}, "
            f"proxy under test on CPU {self.proxy_cpu}"
        )

    def prefix(self, cpu: int | None) -> list[str]:
        return ["taskset", "-c", str(cpu)] if self.mode == "taskset" and cpu is not None else []

    def apply(self, pid: int, cpu: int | None) -> None:
        if self.mode == "affinity" and cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, {cpu})

    def pin_self(self) -> None:
        if self.mode != "none" and self.load_cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {self.load_cpu})


class Child:
    """One server process in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, *, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, pinning: Pinning, cpu: int | None) -> None:
        self._log_file = self.log.open("wb")
        self._proc = subprocess.Popen(
            [*pinning.prefix(cpu), *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        pinning.apply(self._proc.pid, cpu)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._proc.pid  # taskset execs the command: same pid

    def exited(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after a grace period; always reaps."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_GRACE_SECS)
            # Anything left in the group (a hook's child, say) goes too.
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_GRACE_SECS)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stat_fields(pid: int | None) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on: index i is the man page's field i + 3."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the name in (...) may hold spaces


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of one process (not its children), from /proc/<pid>/stat."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def run_seconds(pid: int | None) -> float | None:
    """CPU time of all of a process's threads in nanoseconds' precision, from
    /proc/<pid>/task/*/schedstat (clock ticks are too coarse for an idle process)."""
    if pid is None:
        return None
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that just ended
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return None
    return total / 1e9


def minor_faults(pid: int | None) -> int | None:
    """Minor page faults of one process so far (memory touched for the first time)."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[7])


def rss_mib(pid: int | None) -> float | None:
    """VmRSS of one process in MiB, from /proc/<pid>/status."""
    if pid is None:
        return None
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None
