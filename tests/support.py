"""Real things for tests: fake backends on real sockets, `sh` hooks that keep a journal,
and the daemon itself on a free port.

A `FakeBackend` knows whether it is awake by a state file its hooks write; a request that
reaches it while asleep is recorded as a violation (docs/design.md §4 invariants).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import sys
import textwrap
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from aiollmux.app import MULTIPLEXER, build_app
from aiollmux.config import Config, GroupConfig, ModelConfig, PolicyConfig, parse_config
from aiollmux.hooks import HookRunner
from aiollmux.metrics import Metrics
from aiollmux.multiplexer import Multiplexer
from aiollmux.policy import Policy, load_policy
from aiollmux.server import make_runner, make_site
from aiollmux.switch_costs import SwitchCosts
from aiollmux.switcher import Switcher


async def wait_for(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until a condition on real state holds (bounded); fail the test if it never does.

    For state with no event to await: another process, a file, a queue filled by
    requests still in the network stack. Never a guess at how long something takes.
    """
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - the state lives outside this loop
            await asyncio.sleep(0.005)


def process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Journal:
    """Lines hooks append: `start wake m`, `end wake m`, ... in the order they ran."""

    path: Path

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        return [line for line in self.path.read_text().splitlines() if line.strip()]

    def events(self, kind: str) -> list[str]:
        return [line for line in self.lines() if line.split()[0] == kind]

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def assert_no_overlap(self, groups: Mapping[str, str] | None = None) -> None:
        """At most one wake/sleep hook ran at a time per GPU group (`groups`: model →
        group, for models outside `default`; alive hooks are not journalled)."""
        running: dict[str, str] = {}
        for line in self.lines():
            edge, rest = line.split(" ", 1)
            group = (groups or {}).get(rest.split(" ", 1)[-1], "default")
            if edge == "start":
                assert group not in running, f"{rest!r} started while {running[group]!r} ran"
                running[group] = rest
            elif edge == "end":
                assert running.get(group) == rest, (
                    f"{rest!r} ended while {running.get(group)!r} ran"
                )
                del running[group]


@dataclass
class FakeBackend:
    """An OpenAI-ish server for one model that knows whether it has been woken."""

    model: str
    state_dir: Path
    port: int = 0
    violations: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_progress: int = 0
    closed_streams: int = 0
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)
    chunks_sent: int = 0
    # Streaming tests hold chunk k+1 until the test has seen chunk k.
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    # aiohttp undoes a request's Content-Encoding by default; False keeps the bytes sent.
    decompress_requests: bool = True

    @property
    def awake_file(self) -> Path:
        return self.state_dir / f"{self.model}.awake"

    @property
    def awake(self) -> bool:
        return self.awake_file.exists()

    async def start(self) -> None:
        app = web.Application(client_max_size=2**30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            auto_decompress=self.decompress_requests,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert isinstance(server, asyncio.Server)
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _check_awake(self, where: str, request: web.Request | None = None) -> None:
        if not self.awake and not (request is not None and _peer_closed(request)):
            self.violations.append(f"{where}: {self.model} was asleep")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._check_awake(f"{request.method} {request.path} arrived")
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        self.requests.append(
            {
                "path": request.path_qs,
                "method": request.method,
                "headers": dict(request.headers),
                "body": raw,
            }
        )
        self.in_progress += 1
        try:
            if isinstance(body, dict) and body.get("stream"):
                return await self._stream(request, body)
            delay = body.get("delay", 0) if isinstance(body, dict) else 0
            if delay:
                await asyncio.sleep(delay)
            status = body.get("status", 200) if isinstance(body, dict) else 200
            self._check_awake("answering")
            return web.json_response(
                {"model": self.model, "path": request.path_qs, "echo": body}, status=status,
                headers={"X-Backend": self.model},
            )  # fmt: skip
        finally:
            self.in_progress -= 1

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunks = int(body.get("chunks", 3))
        gate = body.get("gate")
        delay = float(body.get("chunk_delay", 0))
        pad = "x" * int(body.get("pad", 0))  # bytes added to each chunk (fast, big streams)
        try:
            for index in range(chunks):
                if gate is not None and index > 0:
                    await self.gates.setdefault(f"{gate}:{index}", asyncio.Event()).wait()
                elif delay:
                    await asyncio.sleep(delay)
                line = {"model": self.model, "index": index, **({"pad": pad} if pad else {})}
                # aiollmux closes its connection to us before it lets the model sleep
                # (a client that left, a drain that timed out); only this loop has not
                # noticed yet: the chunk goes nowhere, and is not aiollmux's doing.
                self._check_awake(f"chunk {index}", request)
                await response.write(f"data: {json.dumps(line)}\n\n".encode())
                self.chunks_sent += 1
            await response.write(b"data: [DONE]\n\n")
            if gate is not None and body.get("hold_end"):  # the final empty chunk waits
                await self.gates.setdefault(f"{gate}:end", asyncio.Event()).wait()
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            self.closed_streams += 1
            self.stream_closed.set()
            raise
        return response

    def open_gate(self, gate: str, index: int) -> None:
        self.gates.setdefault(f"{gate}:{index}", asyncio.Event()).set()


def _peer_closed(request: web.Request) -> bool:
    """The kernel has the peer's FIN (or reset) for this request's connection, whether or
    not the event loop has read it yet."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None:
        return True
    with socket.socket(fileno=os.dup(sock.fileno())) as peek:
        try:
            return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False  # open, nothing to read
        except OSError:
            return True  # reset


def two_model_switcher(
    tmp_path: Path,
    policy: Policy | None = None,
    *,
    clock: Callable[[], float] | None = None,
    ports: tuple[int, int] = (9101, 9102),
    hook_delay: float = 0.0,
    **policy_options: Any,
) -> Switcher:
    """A Switcher over models alpha and beta whose hooks write to tmp_path/journal.log
    (no backends: for tests of the switcher alone). Without `policy`, the one the
    options name."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    hooks = hook_commands(tmp_path / "journal.log", state, delay=hook_delay)
    models = {
        name: ModelConfig(
            id=name, port=port, wake=hooks["wake"], sleep=hooks["sleep"], alive=hooks["alive"]
        )
        for name, port in zip(("alpha", "beta"), ports, strict=True)
    }
    return _switcher(tmp_path, models, None, policy, clock, PolicyConfig(**policy_options))


def budget_switcher(
    tmp_path: Path,
    sizes: dict[str, float],
    budget: float | None,
    *,
    policy: Policy | None = None,
    clock: Callable[[], float] | None = None,
    hook_delay: float = 0.0,
    free_memory: str | None = None,
    free_memory_timeout_secs: float = 60.0,
    hooks: dict[str, dict[str, str]] | None = None,
    costs: SwitchCosts | None = None,
    metrics: Metrics | None = None,
    **policy_options: Any,
) -> Switcher:
    """A Switcher over models of the given `memory_gb` in a group with `budget` (None: one
    at a time), hooks journalling to tmp_path/journal.log (no backends)."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    commands = hook_commands(tmp_path / "journal.log", state, delay=hook_delay)
    models = {}
    for index, (name, size) in enumerate(sizes.items()):
        own = {**commands, **(hooks or {}).get(name, {})}
        models[name] = ModelConfig(
            id=name,
            port=9101 + index,
            wake=own["wake"],
            sleep=own["sleep"],
            alive=own["alive"],
            memory_gb=size,
        )
    settings = GroupConfig(
        name="default",
        memory_gb=budget,
        free_memory=free_memory,
        free_memory_timeout_secs=free_memory_timeout_secs,
    )
    config = PolicyConfig(**policy_options)
    return _switcher(tmp_path, models, settings, policy, clock, config, costs, metrics)


def _switcher(
    tmp_path: Path,
    models: dict[str, ModelConfig],
    settings: GroupConfig | None,
    policy: Policy | None,
    clock: Callable[[], float] | None,
    config: PolicyConfig,
    costs: SwitchCosts | None = None,
    metrics: Metrics | None = None,
) -> Switcher:
    """The group "default" of `models`, run from tmp_path; the policy `config` names
    unless one is given, a private HookRunner, costs and metrics unless given."""
    metrics = metrics if metrics is not None else Metrics()
    return Switcher(
        group="default",
        models=models,
        policy_config=config,
        policy=policy if policy is not None else load_policy(config),
        hooks=HookRunner(metrics),
        costs=costs if costs is not None else SwitchCosts(),
        metrics=metrics,
        base_dir=tmp_path,
        settings=settings,
        clock=clock if clock is not None else time.monotonic,
    )


def hook_commands(journal: Path, state_dir: Path, *, delay: float = 0.0) -> dict[str, str]:
    """Wake/sleep/alive hooks as real sh that journal their start and end."""
    j, s = shlex.quote(str(journal)), shlex.quote(str(state_dir))
    pause = f"sleep {delay}; " if delay else ""
    wake = (
        f'echo "start wake $LLMUX_MODEL" >> {j}; {pause}'
        f'touch {s}/"$LLMUX_MODEL".awake; echo "end wake $LLMUX_MODEL" >> {j}'
    )
    sleep = (
        f'echo "start sleep $LLMUX_MODEL" >> {j}; {pause}'
        f'rm -f {s}/"$LLMUX_MODEL".awake; echo "end sleep $LLMUX_MODEL" >> {j}'
    )
    alive = f'test -e {s}/"$LLMUX_MODEL".awake'
    return {"wake": wake, "sleep": sleep, "alive": alive}


def gated_wake(lab_tmp: Path, state_dir: Path, model: str) -> tuple[Path, str]:
    """A wake hook that waits until the test creates the returned file."""
    go = lab_tmp / "go"
    hook = f"while [ ! -e {go} ]; do sleep 0.02; done; touch {state_dir}/{model}.awake"
    return go, hook


def without_model(config_text: str, model: str) -> str:
    """The config text with one model's table cut out (tables come last, one per model)."""
    head, _, tail = config_text.partition(f"[models.{toml_string(model)}]")
    _, separator, rest = tail.partition("[models.")
    return head + (separator + rest if separator else "")


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def model_table(model_id: str, port: int, hooks: dict[str, str], **extra: Any) -> str:
    lines = [f"[models.{toml_string(model_id)}]", f"port = {port}"]
    lines += [f"{name} = {toml_string(command)}" for name, command in hooks.items()]
    for key, value in extra.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@dataclass
class Daemon:
    app: web.Application
    url: str
    client: aiohttp.ClientSession
    tmp: Path

    @property
    def mux(self) -> Multiplexer:
        return self.app[MULTIPLEXER]

    async def chat(self, model: str, **body: Any) -> aiohttp.ClientResponse:
        payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
        return await self.client.post(f"{self.url}/v1/chat/completions", json=payload)

    async def metrics(self) -> str:
        async with self.client.get(f"{self.url}/metrics") as response:
            return await response.text()

    async def status(self) -> dict[str, Any]:
        async with self.client.get(f"{self.url}/admin/status") as response:
            result: dict[str, Any] = await response.json()
            return result


@asynccontextmanager
async def running_daemon(config: Config) -> AsyncIterator[Daemon]:
    """The real aiollmux app on a real socket, with `handler_cancellation` as in `run`."""
    app = build_app(config)
    runner = make_runner(app, shutdown_timeout=5, keepalive_timeout=config.keepalive_timeout_secs)
    await runner.setup()
    await make_site(runner, config).start()
    try:
        async with aiohttp.ClientSession() as client:
            yield Daemon(app, f"http://127.0.0.1:{config.port}", client, config.base_dir)
    finally:
        await runner.cleanup()


def child_env(runtime_dir: Path) -> dict[str, str]:
    """The environment of an `aiollmux` child process: this installation on PATH (hooks
    call `aiollmux`), `runtime_dir` for its pidfiles, and none of the variables a daemon
    sets for its hooks (`LLMUX_MODEL`, `LLMUX_PORT`) or that would pick another config
    (`LLMUX_CONFIG`) or pidfile directory (`TMPDIR`)."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    for name in ("LLMUX_CONFIG", "LLMUX_MODEL", "LLMUX_PORT", "TMPDIR"):
        env.pop(name, None)
    return env


async def start_cli(*args: str, token: str | None = None) -> asyncio.subprocess.Process:
    """`python -m aiollmux ARGS` with its output piped, and `token` (if any) as the only
    admin token in its environment."""
    env = {k: v for k, v in os.environ.items() if k != "LLMUX_ADMIN_TOKEN"}
    if token is not None:
        env["LLMUX_ADMIN_TOKEN"] = token
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiollmux", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes


# What a raw backend writes: its bytes, then (if it is a coroutine) whatever it awaits.
Reply = Callable[[asyncio.StreamWriter], Awaitable[None] | None]


@asynccontextmanager
async def raw_backend(
    reply: Reply, *, sent: asyncio.Event | None = None, hold: asyncio.Event | None = None
) -> AsyncIterator[int]:
    """A backend on a real socket that reads one request and writes `reply`'s bytes (then
    sets `sent`, and waits for `hold` before it closes)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        writing = reply(writer)
        if writing is not None:
            await writing
        await writer.drain()
        if sent is not None:
            sent.set()
        if hold is not None:
            await hold.wait()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def raw_exchange(url: str, request: bytes) -> RawResponse | None:
    """Send `request` exactly as written on a fresh connection and read the whole answer;
    None if the server closed the connection without answering."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        except asyncio.IncompleteReadError:
            return None
        status_line, *lines = head.rstrip("\r\n").split("\r\n")
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
        if headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        elif "Content-Length" in headers:
            body = await reader.readexactly(int(headers["Content-Length"]))
        else:
            body = await reader.read()
        return RawResponse(int(status_line.split()[1]), headers, body)
    finally:
        writer.close()
        await writer.wait_closed()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += await reader.readexactly(size)
        await reader.readexactly(2)


@dataclass
class DaemonProcess:
    """`aiollmux run` as a real child process, its output (stdout and stderr) in a file."""

    process: asyncio.subprocess.Process
    url: str
    log: Path

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def events(self) -> list[dict[str, Any]]:
        records = []
        for line in self.lines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def event_names(self) -> list[str]:
        return [str(r["event"]) for r in self.events() if "event" in r]


def _listen_port(config_file: Path) -> int:
    port: int = tomllib.loads(config_file.read_text())["port"]
    return port


JSON_LOGS = ("--log-format", "json", "-v")


@asynccontextmanager
async def daemon_process(
    config_file: Path,
    *,
    options: tuple[str, ...] = JSON_LOGS,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    healthy: bool = True,
    preexec_fn: Callable[[], Any] | None = None,
) -> AsyncIterator[DaemonProcess]:
    """Start `python -m aiollmux run -c config_file OPTIONS` (its port: the config's);
    yield once /health answers (at once, if not `healthy`: to watch it start). `env`: the
    child's whole environment (default: this process's); `preexec_fn` runs in the child
    before it starts (e.g. to lower its fd limit)."""
    port = _listen_port(config_file)
    log = config_file.with_suffix(".log")
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aiollmux", "run", "-c", str(config_file), *options,
            stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output,
            env=env if env is not None else dict(os.environ), cwd=cwd, preexec_fn=preexec_fn,
        )  # fmt: skip
    daemon = DaemonProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        if healthy:
            async with aiohttp.ClientSession() as client:
                await _wait_healthy(client, daemon)
        yield daemon
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _wait_healthy(client: aiohttp.ClientSession, daemon: DaemonProcess) -> None:
    async with asyncio.timeout(30):
        while True:
            if daemon.process.returncode is not None:
                raise AssertionError(f"daemon exited: {daemon.log.read_text()}")
            try:
                async with client.get(f"{daemon.url}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)  # not listening yet: a child process starting


@dataclass
class Lab:
    """A tmp dir with a journal, a state dir and fake backends for a set of models."""

    tmp: Path
    backends: dict[str, FakeBackend] = field(default_factory=dict)
    # The `lab` fixture checks the invariants at teardown; a test that provokes a
    # violation on purpose (and asserts it) says so here.
    expect_violations: bool = False
    expect_hook_overlap: bool = False
    groups: dict[str, str] = field(default_factory=dict)  # model → group, from config_text
    configs_written: int = 0

    @property
    def journal(self) -> Journal:
        return Journal(self.tmp / "journal.log")

    @property
    def state_dir(self) -> Path:
        path = self.tmp / "state"
        path.mkdir(exist_ok=True)
        return path

    async def add_backends(self, *models: str) -> None:
        for model in models:
            backend = FakeBackend(model, self.state_dir)
            await backend.start()
            self.backends[model] = backend

    def config(self, **options: Any) -> Config:
        """The config of `config_text(**options)`, written to a file of its own: a daemon
        reads its `source` when its watcher starts and on each reload, and one config's
        file never changes under the daemon of another (tests that edit a config write
        their own, usually `llmux.toml`, and load it)."""
        text = self.config_text(**options)
        self.configs_written += 1
        path = self.tmp / f"lab-{self.configs_written}.toml"
        path.write_text(text)
        return parse_config(text, str(path), base_dir=self.tmp)

    def config_text(
        self,
        *,
        hook_delay: float = 0.0,
        top: str = "",
        policy: str = "",
        per_model: dict[str, dict[str, Any]] | None = None,
        hooks: dict[str, dict[str, str]] | None = None,
        ports: dict[str, int] | None = None,
    ) -> str:
        if "alive_interval_secs" not in top:
            top += "\nalive_interval_secs = 0\n"
        text = top + f"\nport = {free_port()}\n"
        text += "[policy]\n" + textwrap.dedent(policy) + "\n"
        names = list(self.backends) + [m for m in (ports or {}) if m not in self.backends]
        for model in names:
            port = (ports or {}).get(model) or self.backends[model].port
            commands = hook_commands(self.journal.path, self.state_dir, delay=hook_delay)
            commands.update((hooks or {}).get(model, {}))
            group = (per_model or {}).get(model, {}).get("group")
            if isinstance(group, str):
                self.groups[model] = group
            text += model_table(model, port, commands, **(per_model or {}).get(model, {}))
        return text

    def violations(self) -> list[str]:
        return [v for backend in self.backends.values() for v in backend.violations]

    def check_invariants(self) -> None:
        """No request reached a sleeping backend; no two wake/sleep hooks overlapped."""
        if not self.expect_violations:
            assert self.violations() == []
        if not self.expect_hook_overlap:
            self.journal.assert_no_overlap(self.groups)

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.stop()
