"""Soak: the daemon as a real process under mixed traffic, failing wakes and crashing backends.

Clients stream and not, go away mid-stream or while queued; wake hooks fail on a schedule
drawn from the seed (a per-model counter file picks the line); backends are stopped
while active and restarted once the daemon has noticed (health checks every 0.2 s).
Afterwards nothing may be left behind: no request in flight or queued, no hook process,
no extra file descriptor in the daemon, no request that reached a sleeping backend, no
two hooks at once, no traceback in the log.

Small in CI (`AIOLLMUX_SOAK_SECONDS`, default 8); set it to 300 for a real soak, and
`AIOLLMUX_SOAK_SEED` to vary the schedule. The daemon's asyncio tasks are counted by
the daemon itself (`runtime` in /admin/status); fds, children and counters from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shlex
import signal
import socket
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support import DaemonProcess, FakeBackend, Lab, daemon_process, running_daemon, wait_for

SOAK_SECONDS = float(os.environ.get("AIOLLMUX_SOAK_SECONDS", "8"))
SEED = int(os.environ.get("AIOLLMUX_SOAK_SEED", "1"))
MODELS = ("alpha", "beta", "gamma")
CLIENTS = 12
WAKE_FAILURE_RATE = 0.05  # each failure stalls the group for the 2 s back-off
REQUEST_BOUND = 30.0  # any request taking longer is a hang
FD_MARGIN = 3

pytestmark = pytest.mark.timeout(SOAK_SECONDS * 2 + 90)


def wake_schedule(rng: random.Random, *, second_fails: bool) -> str:
    """Line n says whether a model's n-th wake fails (`second_fails`: so that even a short
    run that wakes the model twice sees a failure)."""
    lines = ["1" if rng.random() < WAKE_FAILURE_RATE else "0" for _ in range(100_000)]
    lines[1] = "1" if second_fails else lines[1]
    return "\n".join(lines) + "\n"


def soak_hooks(lab: Lab, model: str) -> dict[str, str]:
    journal = shlex.quote(str(lab.journal.path))
    state = lab.state_dir
    awake = shlex.quote(str(state / f"{model}.awake"))
    counter = shlex.quote(str(state / f"{model}.wakes"))
    schedule = shlex.quote(str(state / f"{model}.schedule"))
    wake = (
        f'echo "start wake $LLMUX_MODEL" >> {journal}; '
        f"n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}; "
        f'if [ "$(sed -n "${{n}}p" {schedule})" = 1 ]; then '
        f'echo "end wake $LLMUX_MODEL" >> {journal}; echo "scheduled failure $n" >&2; exit 1; fi; '
        f'touch {awake}; echo "end wake $LLMUX_MODEL" >> {journal}'
    )
    sleep = (
        f'echo "start sleep $LLMUX_MODEL" >> {journal}; rm -f {awake}; '
        f'echo "end sleep $LLMUX_MODEL" >> {journal}'
    )
    return {"wake": wake, "sleep": sleep, "alive": f"test -e {awake}"}


class CrashingBackend(FakeBackend):
    """A FakeBackend that can crash as a process does: every open connection is reset and
    so is every new one, until it starts again on the same port.

    The listening socket stays open across crashes: closing an asyncio server races with
    a connection it has just accepted (that connection gets no transport and is never
    closed, so a request on it waits for ever). While crashed, connections are reset at
    once, which a client sees as it would see a dead process's port.
    """

    _listener: asyncio.Server | None = None
    _handlers: Callable[[], asyncio.BaseProtocol] | None = None  # None: crashed
    _protocols: list[asyncio.BaseProtocol]  # aiohttp's handlers take no weak references

    async def crash(self) -> None:
        assert self._runner is not None
        self._handlers = None
        self._abort_all()
        # A handler made just before has its connection_made queued already: once that
        # has run, it has a transport to abort too.
        await asyncio.sleep(0)
        self._abort_all()
        self._protocols = []
        await self._runner.cleanup()
        self._runner = None

    def _abort_all(self) -> None:
        for protocol in self._protocols:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abort()

    def _protocol(self) -> asyncio.BaseProtocol:
        if self._handlers is None:
            return _Reset()
        protocol = self._handlers()
        self._protocols = [p for p in self._protocols if _open(p)]
        self._protocols.append(protocol)
        return protocol

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0
        )
        await self._runner.setup()
        assert self._runner.server is not None
        self._protocols = []
        self._handlers = self._runner.server
        if self._listener is None:
            self._listener = await asyncio.get_running_loop().create_server(
                self._protocol, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._handlers = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        await super().stop()


class _Reset(asyncio.Protocol):
    """A connection to a crashed backend: reset at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.abort()


def _open(protocol: asyncio.BaseProtocol) -> bool:
    """Not yet connected, or connected and not closed."""
    transport = getattr(protocol, "transport", None)
    return transport is None or not transport.is_closing()


# -- the daemon process from the outside -------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tagged_processes(tag: str) -> list[int]:
    """Processes whose environment carries `tag`: the daemon and everything it started,
    even if reparented (a hook's orphaned background job)."""
    marker = f"AIOLLMUX_SOAK_TAG={tag}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue  # gone, or not ours
    return found


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


async def until(check: Callable[[], Awaitable[bool]], within: float) -> None:
    """Poll the daemon over HTTP until `check` holds (bounded)."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - the state is in another process
            await asyncio.sleep(0.02)


# -- traffic -----------------------------------------------------------------------------


@dataclass
class Soak:
    lab: Lab
    daemon: DaemonProcess
    client: aiohttp.ClientSession
    deadline: float
    baseline_fds: int  # the daemon's open fds before the traffic
    baseline_tasks: int  # and its asyncio tasks
    # Rises when a model's backend is stopped and again when it is back: a request that
    # saw it change (or began while it was odd, i.e. down) may fail with a 502 or a cut.
    generation: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    kills: int = 0

    @property
    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    async def status(self) -> dict[str, Any]:
        async with self.client.get(f"{self.daemon.url}/admin/status") as response:
            assert response.status == 200
            result: dict[str, Any] = await response.json()
            return result

    async def client_loop(self, rng: random.Random) -> None:
        while self.loop_time < self.deadline:
            model = rng.choice(MODELS)
            kind = rng.choice(["plain", "plain", "stream", "stream", "leave", "abandon"])
            started = self.generation[model]
            try:
                async with asyncio.timeout(REQUEST_BOUND):
                    outcome = await self.one(rng, model, kind)
            except TimeoutError:
                raise AssertionError(f"a {kind} request for {model} hung") from None
            if outcome in {"backend_error", "cut"}:
                disturbed = started % 2 == 1 or self.generation[model] != started
                assert disturbed, f"{outcome} for {model} whose backend was up throughout"
            self.outcomes[outcome] += 1

    async def one(self, rng: random.Random, model: str, kind: str) -> str:
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        if kind == "plain":
            body["delay"] = rng.choice([0, 0, 0.005, 0.02])
        else:
            body |= {"stream": True, "chunks": rng.randint(1, 6), "chunk_delay": 0.01}
        url = f"{self.daemon.url}/v1/chat/completions"
        if kind == "abandon":  # gives up at a random point: queued, waking or mid-answer
            try:
                async with asyncio.timeout(rng.uniform(0.005, 0.3)):
                    return await self.exchange(url, body, model, kind)
            except TimeoutError:
                return "abandoned"
        return await self.exchange(url, body, model, kind)

    async def exchange(self, url: str, body: dict[str, Any], model: str, kind: str) -> str:
        try:
            async with self.client.post(url, json=body) as response:
                if response.status != 200:
                    return await self.refusal(response)
                if not body.get("stream"):
                    assert (await response.json())["model"] == model
                    return "ok"
                first = await response.content.readuntil(b"\n\n")
                assert json.loads(first.removeprefix(b"data: "))["model"] == model
                if kind == "leave":
                    return "left"  # the client goes away mid-stream
                rest = await response.content.read()
                return "ok" if rest.endswith(b"data: [DONE]\n\n") else "cut"
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            return "cut"  # a backend died mid-answer and the daemon cut the stream

    async def refusal(self, response: aiohttp.ClientResponse) -> str:
        error = (await response.json())["error"]
        expected = {"wake_failed": 503, "backend_error": 502}
        assert expected.get(error["code"]) == response.status, (response.status, error)
        if error["code"] == "wake_failed":  # the hook's stderr reaches the client
            assert "scheduled failure" in error["message"], error
        return str(error["code"])

    async def active_model(self) -> str | None:
        """The next model seen active and serving (the mix switches all the time)."""
        while self.loop_time < self.deadline - 1.0:
            status = await self.status()
            model: str | None = status["active_model"]
            if model is not None and status["models"][model]["in_flight"] > 0:
                return model
            await asyncio.sleep(0.01)  # polling the daemon's state
        return None

    async def killer_loop(self, rng: random.Random, backends: dict[str, CrashingBackend]) -> None:
        """Now and then, crash the active model's backend; restart it once noticed."""
        while self.loop_time < self.deadline - 1.0:
            await asyncio.sleep(rng.uniform(0.3, 1.0))  # spreads the crashes; no sync on it
            model = await self.active_model()
            if model is None:
                break
            backend = backends[model]
            self.generation[model] += 1
            await backend.crash()
            backend.awake_file.unlink(missing_ok=True)  # what it served is gone with it
            self.kills += 1

            async def noticed(model: str = model, backend: CrashingBackend = backend) -> bool:
                # Asleep in the daemon's view, or woken again (its wake hook recreated the
                # file): either way, nothing reaches the restarted backend while "asleep".
                state = (await self.status())["models"][model]["state"]
                return state == "asleep" or backend.awake_file.exists()

            await until(noticed, within=20)
            await backend.start()  # the same port
            self.generation[model] += 1


@pytest.mark.soak
async def test_soak_leaves_nothing_behind(lab: Lab) -> None:
    rng = random.Random(SEED)
    backends = {model: CrashingBackend(model, lab.state_dir) for model in MODELS}
    for model, backend in backends.items():
        await backend.start()
        lab.backends[model] = backend
        schedule = wake_schedule(rng, second_fails=model == MODELS[0])
        (lab.state_dir / f"{model}.schedule").write_text(schedule)
    config = lab.tmp / "llmux.toml"
    config.write_text(
        lab.config_text(
            top="alive_interval_secs = 0.2\n",
            policy="request_timeout_secs = 20\n",
            hooks={model: soak_hooks(lab, model) for model in MODELS},
        )
    )
    tag = uuid.uuid4().hex
    try:
        async with daemon_process(config, env={**os.environ, "AIOLLMUX_SOAK_TAG": tag}) as daemon:
            soak = await run_soak(lab, daemon, backends, rng)
            await assert_nothing_left(lab, daemon, tag, soak)
            daemon.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(daemon.process.wait(), 20) == 0
        await settle(lambda: tagged_processes(tag) == [], lambda: "hooks outlived the daemon")
    finally:
        for leftover in tagged_processes(tag):  # ours, by construction: fail, don't litter
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)

    # What the soak did, so that a quiet run cannot pass for a busy one.
    outcomes = soak.outcomes
    assert outcomes["ok"] >= 2 * SOAK_SECONDS, outcomes
    assert outcomes["left"] + outcomes["abandoned"] > 0, outcomes
    assert soak.kills > 0
    reached = [wake_failures_reached(lab, m) for m in MODELS]
    assert sum(reached) > 0, "no scheduled wake failure was reached"
    assert "switch_failed" in daemon.event_names()

    assert lab.violations() == []
    lab.journal.assert_no_overlap()
    tracebacks = [f"{e['message']}\n{e['exception']}" for e in daemon.events() if "exception" in e]
    assert not tracebacks, "\n\n".join(tracebacks)


async def run_soak(
    lab: Lab, daemon: DaemonProcess, backends: dict[str, CrashingBackend], rng: random.Random
) -> Soak:
    """The traffic, the crashes, then the wait for every request to be over."""
    baseline = open_fds(daemon.process.pid)
    baseline_tasks = (await runtime(daemon))["asyncio_tasks"]
    connector = aiohttp.TCPConnector(limit=CLIENTS * 2)
    async with aiohttp.ClientSession(connector=connector) as client:
        deadline = asyncio.get_running_loop().time() + SOAK_SECONDS
        soak = Soak(
            lab,
            daemon,
            client,
            deadline=deadline,
            baseline_fds=baseline,
            baseline_tasks=baseline_tasks,
        )
        clients = [soak.client_loop(random.Random(rng.random())) for _ in range(CLIENTS)]
        killer = soak.killer_loop(random.Random(rng.random()), backends)
        await asyncio.gather(*clients, killer)

        async def drained() -> bool:
            models = (await soak.status())["models"].values()
            return all(m["in_flight"] == 0 and m["queued"] == 0 for m in models)

        try:
            await until(drained, within=10)
        except TimeoutError:
            raise AssertionError(f"requests left behind: {await soak.status()}") from None
        async with client.post(f"{daemon.url}/admin/sleep") as response:
            assert response.status == 200  # idle: no hook runs from here on
        assert (await soak.status())["state"] == "idle"
    return soak


async def assert_nothing_left(lab: Lab, daemon: DaemonProcess, tag: str, soak: Soak) -> None:
    """No hook process (not even an orphan), no extra fd and no extra asyncio task in the
    daemon."""
    pid, baseline = daemon.process.pid, soak.baseline_fds
    await settle(
        lambda: tagged_processes(tag) == [pid] and children(pid) == [],
        lambda: f"hook processes left: {sorted(set(tagged_processes(tag)) - {pid})}",
    )
    await lab.close()  # backends go, and with them the daemon's pooled upstream connections
    await settle(
        lambda: open_fds(pid) <= baseline + FD_MARGIN,
        lambda: f"{open_fds(pid)} fds open, {baseline} at the start: {fd_targets(pid)}",
    )

    async def tasks_settled() -> bool:
        now = await runtime(daemon)
        return now["asyncio_tasks"] <= soak.baseline_tasks and now["hooks_running"] == 0

    try:
        await until(tasks_settled, within=10)
    except TimeoutError:
        raise AssertionError(
            f"daemon tasks: {await runtime(daemon)}, {soak.baseline_tasks} at the start"
        ) from None


async def runtime(daemon: DaemonProcess) -> dict[str, int]:
    """The daemon's own count of its asyncio tasks and hook processes, asked on a
    connection of its own that closes after the answer (so it adds no idle one)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as client,
        client.get(f"{daemon.url}/admin/status") as response,
    ):
        assert response.status == 200
        body: dict[str, dict[str, int]] = await response.json()
    return body["runtime"]


async def settle(predicate: Callable[[], bool], describe: Callable[[], str]) -> None:
    """`wait_for`, failing with a description of what is still wrong."""
    try:
        await wait_for(predicate)
    except TimeoutError:
        raise AssertionError(describe()) from None


def fd_targets(pid: int) -> list[str]:
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            targets.append(os.readlink(fd))
    return targets


def wake_failures_reached(lab: Lab, model: str) -> int:
    counter = lab.state_dir / f"{model}.wakes"
    wakes = int(counter.read_text()) if counter.exists() else 0
    return (lab.state_dir / f"{model}.schedule").read_text().splitlines()[:wakes].count("1")


# -- a race the soak found ------------------------------------------------------------------


class ResettingBackend(FakeBackend):
    """Streams two chunks; right after putting the second on the wire, the client's own
    socket is closed, so the daemon learns both at once."""

    client: socket.socket | None = None
    first_read: asyncio.Event

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: 0\n\n")
        await self.first_read.wait()
        await response.write(b"data: 1\n\n")  # no await suspends between this and the close
        assert self.client is not None
        self.client.close()
        with contextlib.suppress(ConnectionError):
            await response.write(b"data: 2\n\n")
            await response.write_eof()
        return response


async def test_client_gone_between_two_chunks_is_not_an_error(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    # The upstream chunk wakes the handler before the client's FIN is processed: its write
    # meets a closing transport and Proxy.forward re-raises the ClientConnectionResetError,
    # which aiohttp logs as "Error handling request" with a traceback (and answers 500 to
    # nobody). A client going away is routine: `client_disconnected` at info, no error.
    backend = ResettingBackend("alpha", lab.state_dir)
    backend.first_read = asyncio.Event()
    await backend.start()
    lab.backends["alpha"] = backend
    config = lab.config()
    async with running_daemon(config) as daemon:
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setblocking(False)
        backend.client = client
        await loop.sock_connect(client, ("127.0.0.1", config.port))
        body = json.dumps({"model": "alpha", "stream": True}).encode()
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        with caplog.at_level(logging.INFO):
            await loop.sock_sendall(client, head % len(body) + body)
            received = b""
            while b"data: 0" not in received:
                received += await loop.sock_recv(client, 4096)
            backend.first_read.set()
            switcher = daemon.mux.switchers["default"]
            await wait_for(lambda: backend.first_read.is_set() and switcher.in_flight("alpha") == 0)
    errors = [
        r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= logging.ERROR
    ]
    assert errors == [], errors[0].exc_info
    assert any(getattr(r, "event", None) == "client_disconnected" for r in caplog.records)


# -- hostile clients among normal traffic (docs/design.md §5 "Exposure and limits") ---------------

HOSTILE_SECONDS = float(os.environ.get("AIOLLMUX_HOSTILE_SOAK_SECONDS", "10"))
SLOWLORIS = 40  # connections that send headers a few bytes at a time, never finishing
NON_READERS = 3  # clients that ask for an endless stream and stop reading it
NORMAL_CLIENTS = 6


_ESTABLISHED = 1  # tcpi_state, the first byte of struct tcp_info (linux/tcp.h)


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


@dataclass
class Hostile:
    """Slowloris connections, non-reading clients and normal requests until `deadline`."""

    url: str
    port: int
    deadline: float
    outcomes: Counter[str] = field(default_factory=Counter)

    def running(self) -> bool:
        return asyncio.get_running_loop().time() < self.deadline

    async def slowloris(self) -> None:
        while self.running():
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
                while self.running() and not reader.at_eof():
                    writer.write(b"X-a: b\r\n")  # never the empty line that ends the headers
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.3):
                            if (await reader.read(100)).startswith(b"HTTP/1.1 408"):
                                self.outcomes["slowloris_408"] += 1
            except ConnectionError:
                self.outcomes["slowloris_reset"] += 1
            finally:
                writer.close()

    async def non_reader(self, model: str) -> None:
        loop = asyncio.get_running_loop()
        body = json.dumps({"model": model, "stream": True, "chunks": 10**7, "pad": 65536})
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        request = f"{head}Content-Length: {len(body)}\r\n\r\n{body}".encode()
        while self.running():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", self.port))
                await loop.sock_sendall(sock, request)
                await loop.sock_recv(sock, 1)  # the stream began; read nothing more
                # Cut by the daemon (send_timeout_secs): the socket then reports the reset.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.1, self.deadline - loop.time())):
                        while _tcp_state(sock) == _ESTABLISHED:  # noqa: ASYNC110 - kernel state
                            await asyncio.sleep(0.2)
                        self.outcomes["non_reader_cut"] += 1
            except ConnectionError:
                self.outcomes["non_reader_cut"] += 1
            finally:
                sock.close()

    async def normal(self, client: aiohttp.ClientSession, rng: random.Random) -> None:
        while self.running():
            model = rng.choice(MODELS[:2])  # two models: switches, and drains to wait for
            stream = rng.random() < 0.5
            body: dict[str, Any] = {"model": model, "stream": stream, "chunks": 3}
            async with asyncio.timeout(REQUEST_BOUND):  # a hang fails the test
                async with client.post(f"{self.url}/v1/chat/completions", json=body) as response:
                    text = await response.text()
            assert response.status == 200, text
            assert text.endswith("data: [DONE]\n\n") if stream else model in text
            self.outcomes["normal_ok"] += 1


@pytest.mark.soak
@pytest.mark.timeout(HOSTILE_SECONDS * 2 + 90)
async def test_hostile_clients_do_not_starve_normal_traffic(lab: Lab) -> None:
    await lab.add_backends(*MODELS[:2])
    config = lab.tmp / "llmux.toml"
    config.write_text(
        lab.config_text(
            top="client_header_timeout_secs = 1\nclient_body_timeout_secs = 1\n"
            "send_timeout_secs = 1\nkeepalive_timeout_secs = 2\n",
            policy="request_timeout_secs = 25\n",
        )
    )
    rng = random.Random(SEED)
    async with daemon_process(config) as daemon:
        pid = daemon.process.pid
        baseline_fds = open_fds(pid)
        baseline_tasks = (await runtime(daemon))["asyncio_tasks"]
        port = int(daemon.url.rsplit(":", 1)[1])
        deadline = asyncio.get_running_loop().time() + HOSTILE_SECONDS
        hostile = Hostile(daemon.url, port, deadline)
        async with aiohttp.ClientSession() as client:
            await asyncio.gather(
                *(hostile.slowloris() for _ in range(SLOWLORIS)),
                *(hostile.non_reader(MODELS[i % 2]) for i in range(NON_READERS)),
                *(
                    hostile.normal(client, random.Random(rng.random()))
                    for _ in range(NORMAL_CLIENTS)
                ),
            )

            async def drained() -> bool:
                async with client.get(f"{daemon.url}/admin/status") as response:
                    models = (await response.json())["models"].values()
                return all(m["in_flight"] == 0 and m["queued"] == 0 for m in models)

            await until(drained, within=20)
        await lab.close()  # the daemon's pooled upstream connections go with the backends
        await settle(
            lambda: open_fds(pid) <= baseline_fds + FD_MARGIN,
            lambda: f"{open_fds(pid)} fds open, {baseline_fds} at the start: {fd_targets(pid)}",
        )

        async def tasks_settled() -> bool:
            return (await runtime(daemon))["asyncio_tasks"] <= baseline_tasks

        await until(tasks_settled, within=20)
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"{daemon.url}/metrics") as response,
        ):
            text = await response.text()
        for model in MODELS[:2]:
            assert f'llmux_model_in_flight{{model="{model}"}} 0.0' in text
            assert f'llmux_request_queue_depth{{model="{model}"}} 0.0' in text
        daemon.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.process.wait(), 20) == 0
    outcomes = hostile.outcomes
    # Busy on every side, or the run proves nothing: normal requests were served
    # throughout, slowloris connections were closed with 408, stalled readers were cut.
    assert outcomes["normal_ok"] >= 2 * HOSTILE_SECONDS, outcomes
    assert outcomes["slowloris_408"] > 0, outcomes
    assert outcomes["non_reader_cut"] > 0, outcomes
    phases = {e.get("phase") for e in daemon.events() if e.get("event") == "client_timeout"}
    assert {"headers", "send"} <= phases
    tracebacks = [f"{e['message']}\n{e['exception']}" for e in daemon.events() if "exception" in e]
    assert not tracebacks, "\n\n".join(tracebacks)
