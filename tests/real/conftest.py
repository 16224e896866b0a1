"""The real tier's lab: the built llama-server behind the real daemon through the `llamacpp`
preset, two generated tiny models, and a count of the llama-server processes it runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aiollmux.config import Config, load_config
from tests.real.engines import llama_server, tiny_models
from tests.support import Daemon, free_port, running_daemon, toml_string


@dataclass
class RealLab:
    tmp: Path
    binary: Path
    models: dict[str, Path]
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.tmp / "run"

    @property
    def config_path(self) -> Path:
        return self.tmp / "llmux.toml"

    def write_config(self, *, extra_models: dict[str, Path] | None = None) -> Config:
        """tiny-a and tiny-b (and `extra_models`) through the llamacpp preset."""
        models = {**self.models, **(extra_models or {})}
        text = f"port = {free_port()}\nalive_interval_secs = 0\n"
        text += "[policy]\nrequest_timeout_secs = 120\n"
        for name, path in models.items():
            self.ports.setdefault(name, free_port())
            env = {
                "LLAMA_SERVER_BIN": str(self.binary),
                "LLAMA_MODEL_PATH": str(path),
                "LLAMA_ARGS": f"--alias {name} -c 8192 -t 2 --parallel 1 --slots",
                "AIOLLMUX_RUN_DIR": str(self.run_dir),
            }
            text += f"\n[models.{toml_string(name)}]\nport = {self.ports[name]}\n"
            text += 'preset = "llamacpp"\nwake_timeout_secs = 120\n'
            text += f"[models.{toml_string(name)}.env]\n"
            text += "".join(f"{key} = {toml_string(value)}\n" for key, value in env.items())
        self.config_path.write_text(text)
        return load_config(self.config_path)

    def servers(self) -> list[int]:
        """The ports of the live (not zombie) llama-server processes of this lab."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                args = (proc / "cmdline").read_bytes().split(b"\0")
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if args[0] != str(self.binary).encode() or state in ("Z", "X"):
                    continue
                port = int(args[args.index(b"--port") + 1])
                if port in self.ports.values():
                    found.append(port)
        return sorted(found)

    def port_of(self, model: str) -> int:
        return self.ports[model]

    def cleanup(self) -> None:
        """Kill what the hooks left running (only this lab's llama-servers)."""
        for pidfile in self.run_dir.glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text())
                if str(self.binary).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def real_lab(tmp_path: Path) -> Iterator[RealLab]:
    lab = RealLab(tmp_path, llama_server(), tiny_models())
    try:
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture
async def real_daemon(real_lab: RealLab) -> AsyncIterator[Daemon]:
    async with running_daemon(real_lab.write_config()) as daemon:
        yield daemon


def sse_events(text: str) -> list[dict[str, object]]:
    return [
        json.loads(line[len("data: ") :])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


async def answered(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    """Ask a real server until `check` holds (bounded): llama-server's state has no event to
    await from here."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - the state lives in another process
            await asyncio.sleep(0.05)
