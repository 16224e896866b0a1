"""A lab for the contrib hook sets: real `sh`, real curl, fake backends on real sockets.

The hooks run as aiollmux runs them (`sh` with LLMUX_MODEL/LLMUX_PORT), with a bin directory
first on PATH whose `vllm`, `llama-server`, `ollama`, `docker`, `podman` and `python-sglang`
are the fakes of `fakes.py`. Everything a test starts is killed at its end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.contrib.fake_containers import process_alive
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
HOOKS = REPO / "contrib" / "hooks"
FAKES = Path(__file__).with_name("fakes.py")
FAKE_CLI = Path(__file__).with_name("fake_containers.py")
SH = shutil.which("sh") or "/bin/sh"
BACKENDS = ("vllm", "llamacpp", "ollama", "sglang", "docker")
# Program on the lab's PATH -> the fake it runs.
FAKE_PROGRAMS = {
    "vllm": (FAKES, "vllm"),
    "llama-server": (FAKES, "llama-server"),
    "ollama": (FAKES, "ollama"),
    "python-sglang": (FAKES, "sglang"),
    "docker": (FAKE_CLI, "docker"),
    "podman": (FAKE_CLI, "podman"),
}


def _hook_settings() -> frozenset[str]:
    """Every variable the hooks read with a default, plus what they export to servers."""
    names = {"VLLM_SERVER_DEV_MODE", "OLLAMA_HOST"}
    for script in HOOKS.rglob("*.sh"):
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)(?::?[-+])", script.read_text()))
    return frozenset(n for n in names if not n.startswith("LLMUX_") and n != "TMPDIR")


HOOK_SETTINGS = _hook_settings()


def require_curl() -> str:
    curl = shutil.which("curl")
    assert curl is not None, (
        "curl is required by the contrib hooks and their tests: install it (apt-get install curl)"
    )
    return curl


@dataclass
class HookResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.splitlines()


@dataclass
class HookLab:
    tmp: Path
    model: str = "org/model-7b"
    port: int = field(default_factory=free_port)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for directory in (self.bin_dir, self.run_dir, self.state_dir):
            directory.mkdir(exist_ok=True)
        for name, (script, kind) in FAKE_PROGRAMS.items():
            program = self.bin_dir / name
            program.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" {kind} "$@"\n')
            program.chmod(0o755)

    @property
    def bin_dir(self) -> Path:
        return self.tmp / "bin"

    @property
    def run_dir(self) -> Path:
        return self.tmp / "run"

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    def env(self, **extra: str) -> dict[str, str]:
        # The machine's own settings must not leak into a hook (CI boxes set CONTAINER_NAME…).
        inherited = {k: v for k, v in os.environ.items() if k not in HOOK_SETTINGS}
        return {
            **inherited,
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}",
            "LLMUX_MODEL": self.model,
            "LLMUX_PORT": str(self.port),
            "AIOLLMUX_RUN_DIR": str(self.run_dir),
            "FAKE_STATE_DIR": str(self.state_dir),
            "FAKE_LIFETIME_SECS": "60",
            "POLL_SECS": "0.05",
            "STOP_GRACE_SECS": "5",
            **extra,
        }

    def run(self, backend: str, hook: str, **extra: str) -> HookResult:
        """Run one hook to its end as aiollmux would: `sh`, its environment, stdin closed, a
        process group of its own."""
        env = self.env(LLMUX_HOOK=hook, **extra)
        completed = subprocess.run(
            [SH, str(HOOKS / backend / f"{hook}.sh")],
            env=env,
            cwd=self.tmp,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return HookResult(completed.returncode, completed.stdout, completed.stderr)

    def ok(self, backend: str, hook: str, **extra: str) -> HookResult:
        result = self.run(backend, hook, **extra)
        assert result.returncode == 0, f"{backend}/{hook}.sh failed: {result.stderr}"
        return result

    def fails(self, backend: str, hook: str, **extra: str) -> str:
        """Run a hook that must fail; return its one line of stderr."""
        result = self.run(backend, hook, **extra)
        assert result.returncode == 1, f"{backend}/{hook}.sh: {result}"
        assert len(result.error_lines) == 1, f"not one line: {result.stderr!r}"
        return result.error_lines[0]

    def start_fake(self, kind: str, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        """A backend the test runs itself (not started by a hook); returns once it listens."""
        process = subprocess.Popen(
            [sys.executable, str(FAKES), kind, *args],
            env=self.env(**extra),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()  # the fake prints one line once it listens
        assert line.startswith(b"listening"), f"{kind} did not start: {line!r}"
        return process

    def get(self, path: str, port: int | None = None) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{port or self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def fake_state(self) -> dict[str, Any]:
        status, state = self.get("/_fake/state")
        assert status == 200
        assert isinstance(state, dict)
        return state

    def pid(self, backend: str) -> int | None:
        """The pid in the pidfile the hooks keep for this backend and port, if any."""
        pidfile = self.run_dir / f"{backend}-{self.port}.pid"
        return int(pidfile.read_text()) if pidfile.exists() else None

    def port_answers(self) -> bool:
        try:
            self.get("/")
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    def cleanup(self) -> None:
        pids = [int(p.read_text()) for p in self.run_dir.glob("*.pid") if p.read_text().strip()]
        pids += [int(p.read_text()) for p in self.state_dir.glob("*.pid")]
        containers = self.state_dir / "containers.json"
        if containers.exists():
            pids += [c["pid"] for c in json.loads(containers.read_text()).values() if c["pid"]]
        for pid in pids:
            if process_alive(pid) and _is_fake(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for process in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _is_fake(pid: int) -> bool:
    """Only ever kill our own fakes: a pid from a file may have been reused since."""
    try:
        return str(FAKES).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture
def hook_lab(tmp_path: Path) -> Iterator[HookLab]:
    require_curl()
    lab = HookLab(tmp_path)
    try:
        yield lab
    finally:
        lab.cleanup()
