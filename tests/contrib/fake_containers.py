"""Fake `docker` and `podman` CLIs for the contrib hook tests, run as a program.

`fake_containers.py docker|podman ARGS…`: the few commands the hooks use, over a JSON file of
containers that a test writes. A started container runs `fakes.py container --port N` (a fake
model server). Standard library only: the hooks call the CLI in their polling loops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATE_DIR = Path(os.environ.get("FAKE_STATE_DIR", "."))
FAKES = Path(__file__).with_name("fakes.py")


def option(args: list[str], name: str, default: str | None = None) -> str | None:
    return args[args.index(name) + 1] if name in args else default


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie (orphans may wait a while to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


class ContainerCli:
    """The few docker/podman commands the hooks use, over a JSON file of containers.

    FAKE_STATE_DIR/containers.json maps a name to {"port", "status", "pid", "checkpointed"};
    a test creates it. A started container runs `fakes.py container --port N`.
    """

    def __init__(self, program: str) -> None:
        self.program = program
        self.file = STATE_DIR / "containers.json"
        self.containers: dict[str, dict[str, Any]] = json.loads(self.file.read_text())

    def save(self) -> None:
        self.file.write_text(json.dumps(self.containers))

    def main(self, args: list[str]) -> int:
        with (STATE_DIR / "cli.log").open("a") as log:
            log.write(" ".join([self.program, *args]) + "\n")
        if args[:1] == ["container"]:
            args = args[1:]
        command, rest = args[0], args[1:]
        name = rest[-1]
        if name not in self.containers:
            print(f"Error: no such container: {name}", file=sys.stderr)
            return 125
        container = self.containers[name]
        if container["status"] == "running" and not process_alive(container["pid"]):
            container["status"] = "exited"  # its server crashed
        commands: dict[str, Callable[[dict[str, Any], list[str]], int]] = {
            "inspect": self.inspect,
            "start": self.start,
            "stop": self.stop,
            "logs": self.logs,
        }
        if self.program == "podman":
            commands |= {"checkpoint": self.checkpoint, "restore": self.restore}
        if command not in commands:
            print(f"{self.program}: unknown command {command!r}", file=sys.stderr)
            return 125
        try:
            return commands[command](container, rest)
        finally:
            self.save()

    def inspect(self, container: dict[str, Any], args: list[str]) -> int:
        fields = {
            "{{.State.Status}}": container["status"],
            "{{.State.Running}}": str(container["status"] == "running").lower(),
        }
        if self.program == "podman":
            fields["{{.State.Checkpointed}}"] = str(container["checkpointed"]).lower()
        template = option(args, "-f")
        if template not in fields:
            print(f"template: can't evaluate {template}", file=sys.stderr)
            return 1
        print(fields[template])
        return 0

    def start(self, container: dict[str, Any], args: list[str], *, restored: bool = False) -> int:
        if container["status"] != "running":
            log = (STATE_DIR / f"container-{args[-1]}.log").open("a")
            env = {**os.environ, "FAKE_RESTORED": "1" if restored else "0"}
            command = [sys.executable, str(FAKES), "container", "--port", str(container["port"])]
            process = subprocess.Popen(
                command, stdout=log, stderr=log, start_new_session=True, env=env
            )
            container.update(status="running", pid=process.pid, checkpointed=False)
        print(args[-1])
        return 0

    def stop(self, container: dict[str, Any], args: list[str]) -> int:
        if container["status"] == "running":
            self._end(container["pid"], float(option(args, "-t", "10") or 10))
            container["status"] = "exited"
        print(args[-1])
        return 0

    def _end(self, pid: int, grace: float) -> None:
        """Like `docker stop`: SIGTERM, SIGKILL after the grace time, return once it is gone."""
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
        while process_alive(pid):
            time.sleep(0.02)

    def logs(self, container: dict[str, Any], args: list[str]) -> int:
        path = STATE_DIR / f"container-{args[-1]}.log"
        lines = path.read_text().splitlines() if path.exists() else []
        print("\n".join(lines[-int(option(args, "--tail", "10") or 10) :]))
        return 0

    def checkpoint(self, container: dict[str, Any], args: list[str]) -> int:
        if container["status"] != "running":
            print(f"Error: {args[-1]} is not running", file=sys.stderr)
            return 125
        self._end(container["pid"], 0)
        container.update(status="exited", checkpointed=True)
        return 0

    def restore(self, container: dict[str, Any], args: list[str]) -> int:
        if not container["checkpointed"] or os.environ.get("FAKE_RESTORE_FAIL") == "1":
            print("Error: CRIU restore failed: cuda-checkpoint: no such device", file=sys.stderr)
            return 125
        return self.start(container, args, restored=True)


if __name__ == "__main__":
    sys.exit(ContainerCli(sys.argv[1]).main(sys.argv[2:]))
