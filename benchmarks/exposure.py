"""Measurements for docs/design.md §5 "Exposure and limits" (issue 15's closing note).

1. Idle connections: N (default 5,000) TCP connections that send nothing, held while a
   client sends normal requests; the daemon's RSS, and its fds and asyncio tasks before,
   during and after.
2. A non-reading client: it asks for an endless stream, reads its first bytes and stops;
   how long a switch to another model then takes, for a few `send_timeout_secs` values.

Run from the repository root: `python benchmarks/exposure.py [--idle 5000] [--hold 10]`.
Linux only (/proc). The daemon gets `max_connections` above N (the default, 2048, would
keep most of them waiting in the backlog, by design).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import free_port  # noqa: E402
from processes import Child, Pinning, rss_mib  # noqa: E402


def config_text(port: int, backends: tuple[int, int], send_timeout: float, idle: int) -> str:
    models = "".join(
        f'\n[models.{name}]\nport = {p}\nwake = "true"\nsleep = "true"\nalive = "true"\n'
        for name, p in zip(("bench-a", "bench-b"), backends, strict=True)
    )
    return (
        f'host = "127.0.0.1"\nport = {port}\nmax_connections = {idle + 1000}\n'
        f"send_timeout_secs = {send_timeout}\nalive_interval_secs = 0\n"
        f'[policy]\nname = "fifo"\nrequest_timeout_secs = 120\n{models}'
    )


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def runtime(session: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with session.get(f"{url}/admin/status") as response:
        body: dict[str, dict[str, int]] = await response.json()
        return body["runtime"]


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)


async def normal_traffic(
    session: aiohttp.ClientSession, url: str, stop: asyncio.Event
) -> tuple[list[float], int]:
    latencies: list[float] = []
    failures = 0
    body = {"model": "bench-a", "messages": [{"role": "user", "content": "hi"}]}
    while not stop.is_set():
        started = time.monotonic()
        try:
            async with session.post(f"{url}/v1/chat/completions", json=body) as response:
                await response.read()
                ok = response.status == 200
        except aiohttp.ClientError:
            ok = False
        if ok:
            latencies.append(time.monotonic() - started)
        else:
            failures += 1
    return latencies, failures


async def idle_connections(daemon: Child, url: str, port: int, count: int, hold: float) -> None:
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(force_close=True)  # adds no idle connection of its own
    async with aiohttp.ClientSession(connector=connector) as session:
        start_fds, start_tasks = (
            open_fds(daemon.pid),
            (await runtime(session, url))["asyncio_tasks"],
        )
        start_rss = rss_mib(daemon.pid) or 0.0
        stop = asyncio.Event()
        traffic = asyncio.ensure_future(normal_traffic(session, url, stop))
        sockets: list[socket.socket] = []
        peak_rss = start_rss
        try:
            for _ in range(count):
                sock = socket.socket()
                sock.setblocking(False)
                sockets.append(sock)
                await loop.sock_connect(sock, ("127.0.0.1", port))
            deadline = time.monotonic() + hold
            while time.monotonic() < deadline:
                peak_rss = max(peak_rss, rss_mib(daemon.pid) or 0.0)
                await asyncio.sleep(0.25)
            held_fds = open_fds(daemon.pid)
        finally:
            for sock in sockets:
                sock.close()
        stop.set()
        latencies, failures = await traffic
        async with asyncio.timeout(60):
            while open_fds(daemon.pid) > start_fds:  # noqa: ASYNC110 - another process's fds
                await asyncio.sleep(0.1)
        end_tasks = (await runtime(session, url))["asyncio_tasks"]
    p = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    print(f"idle connections held:        {count} for {hold:.0f} s")
    print(f"normal requests served:       {len(latencies)} (failed: {failures})")
    print(f"  latency p50 / p99 / max:    {p[49] * 1000:.1f} / {p[98] * 1000:.1f} / "
          f"{max(latencies, default=0) * 1000:.1f} ms")  # fmt: skip
    print(f"daemon RSS start / peak:      {start_rss:.1f} / {peak_rss:.1f} MiB")
    print(f"daemon fds start / held / end: {start_fds} / {held_fds} / {open_fds(daemon.pid)}")
    print(f"daemon tasks start / end:     {start_tasks} / {end_tasks}")


def set_send_timeout(config: Path, seconds: float) -> None:
    lines = [
        f"send_timeout_secs = {seconds}" if line.startswith("send_timeout_secs") else line
        for line in config.read_text().splitlines()
    ]
    config.write_text("\n".join(lines) + "\n")


async def stalled_reader_switch(url: str, port: int, config: Path, send_timeout: float) -> float:
    """Seconds a switch to bench-b takes while a client stalls on a bench-a stream."""
    async with aiohttp.ClientSession() as session:
        set_send_timeout(config, send_timeout)
        async with session.post(f"{url}/admin/reload") as response:
            assert response.status == 200, await response.text()
        async with session.post(f"{url}/admin/switch", json={"model": "bench-a"}) as response:
            assert response.status == 200
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        body = b'{"model": "bench-a"}'
        await loop.sock_sendall(
            sock,
            b"POST /v1/chat/completions?stream=100000000 HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        await loop.sock_recv(sock, 1)
        started = time.monotonic()
        async with session.post(f"{url}/admin/switch", json={"model": "bench-b"}) as response:
            assert response.status == 200
        delay = time.monotonic() - started
        sock.close()
        return delay


async def main_async(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle + 200:
        sys.exit(f"the fd limit ({hard}) is too low for {args.idle} connections")
    workdir = Path(tempfile.mkdtemp(prefix="aiollmux-exposure-"))
    ports = (free_port(), free_port())
    port = free_port()
    config = workdir / "llmux.toml"
    config.write_text(config_text(port, ports, 60, args.idle))
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    backend = Child(
        "backend",
        [sys.executable, str(HERE / "fast_backend.py"), "--port", str(ports[0]), "--port",
         str(ports[1])],
        workdir / "backend.log", env=env,
    )  # fmt: skip
    daemon = Child(
        "aiollmux",
        [sys.executable, "-m", "aiollmux", "run", "-c", str(config)],
        workdir / "aiollmux.log",
        env=env,
    )
    pinning = Pinning.choose(False)
    url = f"http://127.0.0.1:{port}"
    try:
        backend.start(pinning, None)
        daemon.start(pinning, None)
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, url)
        await idle_connections(daemon, url, port, args.idle, args.hold)
        print()
        for send_timeout in args.send_timeouts:
            delay = await stalled_reader_switch(url, port, config, send_timeout)
            print(f"switch behind a non-reading client: {delay:.2f} s "
                  f"(send_timeout_secs = {send_timeout:g})")  # fmt: skip
    finally:
        daemon.stop()
        backend.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=5000, help="idle connections to hold")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds to hold them")
    parser.add_argument(
        "--send-timeouts", type=float, nargs="+", default=[1.0, 3.0], dest="send_timeouts"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
