"""Non-streaming load from `wrk` (Debian's package): a C load generator with keep-alive
connections, so the proxy saturates before the load generator does (a Python client
saturates first at concurrency 16 and above on two cores).

Each run is one `wrk -t1 -cN -dS` against one target, pinned to the load CPU; a Lua
`done` hook prints the request count, errors and the latency percentiles in one line.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from loadgen import PATH, Target, percentile
from processes import Pinning, cpu_seconds

_MARK = "WRK-RESULT"
_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("{mark} %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


@dataclass(slots=True)
class WrkResult:
    """Slices of one target summed: counts add up, percentiles are medians of slices."""

    requests: int = 0
    seconds: float = 0.0
    errors: int = 0  # socket errors and timeouts
    bad_status: int = 0  # answers other than 2xx/3xx
    cpu_seconds: float | None = None
    p50s: list[float] = field(default_factory=list)  # seconds, one per slice
    p99s: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def p50(self) -> float:
        return percentile(self.p50s, 0.5) if self.p50s else float("nan")

    @property
    def p99(self) -> float:
        return percentile(self.p99s, 0.5) if self.p99s else float("nan")

    @property
    def cpu_per_request(self) -> float | None:
        if self.cpu_seconds is None or not self.requests:
            return None
        return self.cpu_seconds / self.requests


class WrkLoad:
    """One Lua script for a body; `run` adds one slice to a target's result."""

    def __init__(self, body: bytes, pinning: Pinning) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="aiollmux-wrk-")
        self.script = Path(self._dir.name) / "post.lua"
        text = body.decode()
        if "]==]" in text:
            raise ValueError("the body may not contain ]==]")
        self.script.write_text(_SCRIPT.replace("{body}", text).replace("{mark}", _MARK))
        self.pinning = pinning

    def close(self) -> None:
        self._dir.cleanup()

    def run(self, target: Target, *, connections: int, seconds: float, into: WrkResult) -> None:
        command = [
            *self.pinning.prefix(self.pinning.load_cpu),
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",  # whole seconds only
            "--timeout",
            "10s",
            "-s",
            str(self.script),
            target.url + PATH,
        ]
        cpu_before = cpu_seconds(target.pid)
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
        cpu_after = cpu_seconds(target.pid)
        line = next((x for x in done.stdout.splitlines() if x.startswith(_MARK)), None)
        if line is None:
            raise RuntimeError(f"wrk printed no result: {done.stdout}\n{done.stderr}")
        requests, duration_us, errors, bad, p50_us, p99_us = (int(x) for x in line.split()[1:])
        into.requests += requests
        into.seconds += duration_us / 1e6
        into.errors += errors
        into.bad_status += bad
        into.p50s.append(p50_us / 1e6)
        into.p99s.append(p99_us / 1e6)
        if cpu_before is not None and cpu_after is not None:
            into.cpu_seconds = (into.cpu_seconds or 0.0) + cpu_after - cpu_before
