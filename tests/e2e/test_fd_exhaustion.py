"""Running out of file descriptors must not hang the daemon (docs/design.md §5, issue 15 item 1).

The daemon runs as a real child process; its fd limit is lowered from outside (prlimit)
once it holds idle connections, so that every new fd fails with EMFILE: the alive hook's
pipes, the accept of a new client. It must log that with a back-off, answer /health again
once the connections go, and stop on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import DaemonProcess, Lab, daemon_process, wait_for

pytestmark = pytest.mark.timeout(120)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def accept_queue(port: int) -> int:
    """Connections waiting in the kernel's backlog of the listener on `port` (its rx_queue)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no listener on port {port}")


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):  # completes in the kernel
                sock.connect(("127.0.0.1", port))
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def resource_events(daemon: DaemonProcess, where: str) -> list[dict[str, Any]]:
    return [
        e for e in daemon.events() if e.get("event") == "resource_exhausted" and e["where"] == where
    ]


def adopted_config(lab: Lab, top: str) -> Path:
    lab.backends["alpha"].awake_file.touch()  # adopted at start: the alive checks run at once
    path = lab.tmp / "llmux.toml"
    path.write_text(lab.config_text(top=top))
    return path


async def health_status(url: str) -> int:
    async with aiohttp.ClientSession() as client, client.get(f"{url}/health") as response:
        return response.status


async def test_out_of_fds_backs_off_recovers_and_stops(lab: Lab) -> None:
    await lab.add_backends("alpha")
    config = adopted_config(lab, "alive_interval_secs = 0.1\nshutdown_timeout_secs = 5")
    port = int(config.read_text().split("\nport = ")[1].split()[0])
    async with daemon_process(config) as daemon:
        pid = daemon.process.pid
        assert await health_status(daemon.url) == 200
        before = open_fds(pid)
        with idle_connections(port, 20):
            await wait_for(lambda: open_fds(pid) >= before + 20)
            # From now on no new fd: every pipe, pidfd and accept fails with EMFILE. (Below
            # the count, which may include an alive hook's pipes, open for a moment.)
            held = open_fds(pid) - 8
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (held, held))
            await wait_for(lambda: bool(resource_events(daemon, "alive hook")), within=20)
            probe = asyncio.ensure_future(health_status(daemon.url))  # waits in the backlog
            await wait_for(lambda: bool(resource_events(daemon, "accept")), within=20)
            # Two alive-hook records 10 s apart: the second counts what it held back. A
            # monitor looping without a yield would have tried thousands of times.
            await wait_for(lambda: len(resource_events(daemon, "alive hook")) >= 2, within=40)
            second = resource_events(daemon, "alive hook")[1]
            assert 0 < second["suppressed"] < 20, second
            assert not probe.done()
        # The connections are gone: the fds are free again, the waiting client is served.
        async with asyncio.timeout(20):
            assert await probe == 200
        assert await health_status(daemon.url) == 200
        daemon.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):  # shutdown_timeout_secs + hooks' grace
            assert await daemon.process.wait() == 0
    errors = [e for e in daemon.events() if e.get("level") == "error"]
    assert {e["event"] for e in errors} <= {"resource_exhausted"}, errors


def _low_fd_limit(limit: int) -> Any:
    def apply() -> None:  # in the child, before exec: the hard limit too, so it cannot raise it
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


async def test_max_connections_capped_by_the_fd_limit(lab: Lab) -> None:
    await lab.add_backends("alpha")
    config = adopted_config(lab, "alive_interval_secs = 0.1")
    port = int(config.read_text().split("\nport = ")[1].split()[0])
    async with daemon_process(config, preexec_fn=_low_fd_limit(128)) as daemon:
        limit = next(e for e in daemon.events() if e.get("event") == "fd_limit")
        assert (limit["soft"], limit["hard"]) == (128, 128)
        cap = 128 - 64
        with idle_connections(port, cap + 10) as sockets:
            # The daemon takes `cap` of them; the other ten wait in the kernel's backlog.
            await wait_for(lambda: accept_queue(port) == 10)
            await wait_for(lambda: "max_connections" in daemon.event_names())
            probe = asyncio.ensure_future(health_status(daemon.url))
            await wait_for(lambda: accept_queue(port) == 11)
            for sock in sockets[:11]:  # accepted first, so these free slots
                sock.close()
            async with asyncio.timeout(20):
                assert await probe == 200
        assert await health_status(daemon.url) == 200
        assert resource_events(daemon, "alive hook") == []  # the reserve kept hooks running


async def test_a_reload_raising_max_connections_accepts_the_waiting_clients(lab: Lab) -> None:
    # The accept loop paused at max_connections waited for a connection to close; a reload
    # that raised the limit went unseen until then.
    await lab.add_backends("alpha")
    top = "max_connections = 1\nclient_header_timeout_secs = 120\nkeepalive_timeout_secs = 120"
    config = adopted_config(lab, top)
    port = int(config.read_text().split("\nport = ")[1].split()[0])
    async with daemon_process(config) as daemon:
        await wait_for(lambda: accept_queue(port) == 0)  # /health's connection is gone
        with idle_connections(port, 1):  # holds the one slot (for 120 s)
            await wait_for(lambda: "max_connections" in daemon.event_names())
            probe = asyncio.ensure_future(health_status(daemon.url))
            await wait_for(lambda: accept_queue(port) == 1)  # waits in the backlog
            config.write_text(
                config.read_text().replace("max_connections = 1", "max_connections = 4")
            )
            daemon.process.send_signal(signal.SIGHUP)
            await wait_for(lambda: "config_reloaded" in daemon.event_names())
            async with asyncio.timeout(20):
                assert await probe == 200
