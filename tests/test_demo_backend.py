"""The demo backend: its OpenAI-shaped answers (in process), and the pidfile hooks
`--detach/--check/--stop` as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from aiollmux.cli import main
from aiollmux.tools import demo_control
from aiollmux.tools.demo_backend import DemoSettings, build_demo_app, serve_demo
from tests.support import child_env, free_port, process_gone

CHILD_DEADLINE_SECS = 30.0  # a bound on a child process; tests wait on its output instead
REPLY = "Hello from m! This is a demo backend, not a real model. You said: tell me a story"


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = build_demo_app(DemoSettings(model="m", port=0, token_delay=0))
    async with TestClient(TestServer(app)) as client:
        yield client


def sse_events(text: str) -> list[str]:
    events = [event for event in text.split("\n\n") if event]
    assert all(event.startswith("data: ") for event in events), text
    return [event.removeprefix("data: ") for event in events]


# -- the HTTP surface, in process -----------------------------------------------------------


async def test_chat_completion(client: TestClient[Any, Any]) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "tell me a story"},
    ]
    response = await client.post("/v1/chat/completions", json={"messages": messages})
    assert response.status == 200
    body = await response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "m"
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": REPLY}}
    ]
    words = len(REPLY.split(" "))
    assert body["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": words,
        "total_tokens": words + 1,
    }


async def test_text_completion(client: TestClient[Any, Any]) -> None:
    response = await client.post("/v1/completions", json={"prompt": "tell me a story"})
    body = await response.json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["choices"] == [{"index": 0, "finish_reason": "stop", "text": REPLY}]


async def test_streamed_chat_completion(client: TestClient[Any, Any]) -> None:
    body = {"stream": True, "messages": [{"role": "user", "content": "tell me a story"}]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    events = sse_events(await response.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) == len(REPLY.split(" "))
    assert {(c["object"], c["model"], c["id"]) for c in chunks} == {
        ("chat.completion.chunk", "m", chunks[0]["id"])
    }
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == REPLY
    reasons = [c["choices"][0]["finish_reason"] for c in chunks]
    assert reasons == [None] * (len(chunks) - 1) + ["stop"]


async def test_streamed_text_completion(client: TestClient[Any, Any]) -> None:
    response = await client.post("/v1/completions", json={"prompt": "hi", "stream": True})
    events = sse_events(await response.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks).endswith("You said: hi")


async def test_tokens_are_paced_by_token_delay() -> None:
    app = build_demo_app(DemoSettings(model="slow", port=0, token_delay=0.001))
    async with TestClient(TestServer(app)) as slow:
        response = await slow.post("/v1/completions", json={"prompt": "x", "stream": True})
        chunks = [json.loads(e) for e in sse_events(await response.text())[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks).startswith("Hello from slow!")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens(client: TestClient[Any, Any], field: str) -> None:
    body = {"prompt": "hi", field: 3}
    answer = await (await client.post("/v1/completions", json=body)).json()
    assert answer["choices"][0]["text"] == "Hello from m!"
    assert answer["usage"]["completion_tokens"] == 3
    streamed = await client.post("/v1/completions", json={**body, "stream": True})
    assert len(sse_events(await streamed.text())) == 3 + 1  # three tokens and [DONE]


@pytest.mark.parametrize("value", [0, -1, True, "3", 2.5])
async def test_invalid_max_tokens_are_ignored(client: TestClient[Any, Any], value: Any) -> None:
    answer = await (await client.post("/v1/completions", json={"max_tokens": value})).json()
    assert answer["choices"][0]["text"].endswith("You said: nothing")


@pytest.mark.parametrize(
    "messages", [[{"role": "user", "content": [{"type": "text"}]}], ["not an object"], []]
)
async def test_prompt_it_cannot_read(client: TestClient[Any, Any], messages: Any) -> None:
    answer = await (await client.post("/v1/chat/completions", json={"messages": messages})).json()
    assert answer["choices"][0]["message"]["content"].endswith("You said: nothing")


@pytest.mark.parametrize(("data", "message"), [(b"{nope", "invalid JSON"), (b"[1]", "an object")])
async def test_bad_bodies(client: TestClient[Any, Any], data: bytes, message: str) -> None:
    response = await client.post("/v1/chat/completions", data=data)
    assert response.status == 400
    assert message in (await response.json())["error"]["message"]


async def test_models_and_health(client: TestClient[Any, Any]) -> None:
    models = await (await client.get("/v1/models")).json()
    assert models == {
        "object": "list",
        "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "demo"}],
    }
    health = await client.get("/health")
    assert (health.status, await health.json()) == (200, {"status": "ok", "model": "m"})


# -- the command, as real processes -----------------------------------------------------------


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


Demo = Callable[..., Outcome]


def in_subprocess(env: dict[str, str], *args: str) -> Outcome:
    """`aiollmux demo-backend ARGS` as a hook runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "aiollmux", "demo-backend", *args], env=env,
        capture_output=True, text=True, timeout=CHILD_DEADLINE_SECS, check=False,
    )  # fmt: skip
    return Outcome(result.returncode, result.stdout, result.stderr)


def in_process(env: dict[str, str], *args: str) -> Outcome:
    result = CliRunner().invoke(main, ["demo-backend", *args], env=env)
    return Outcome(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(params=[in_subprocess, in_process], ids=["subprocess", "in-process"])
def demo(request: pytest.FixtureRequest, tmp_path: Path) -> Demo:
    """Runs the command both ways: as a real hook would, and through CliRunner."""
    env = child_env(tmp_path)
    runner: Callable[..., Outcome] = request.param
    return lambda *args: runner(env, *args)


def default_pidfile(tmp_path: Path, port: int) -> Path:
    return tmp_path / f"aiollmux-demo-{os.getuid()}" / f"{port}.pid"


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def chat(port: int, content: str = "hi") -> dict[str, Any]:
    body = json.dumps({"messages": [{"role": "user", "content": content}]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=body, method="POST"
    )
    with urllib.request.urlopen(request, timeout=CHILD_DEADLINE_SECS) as response:
        answer: dict[str, Any] = json.load(response)
        return answer


def test_detach_check_stop(demo: Demo, tmp_path: Path) -> None:
    port = free_port()
    pidfile = default_pidfile(tmp_path, port)
    common = ("--port", str(port), "--model", "m", "--token-delay", "0")

    not_running = demo("--check", *common)
    assert (not_running.returncode, not_running.stdout) == (1, "")
    assert not_running.stderr == f"error: not running: no pidfile at {pidfile}\n"

    first = demo("--detach", *common)
    assert first.returncode == 0, first.stderr
    pid = int(pidfile.read_text())
    assert first.stdout == f"demo backend 'm' running on port {port} (pid {pid})\n"
    assert chat(port)["model"] == "m"

    again = demo("--detach", *common)  # a second wake leaves the running backend alone
    assert (again.returncode, again.stdout) == (0, first.stdout)
    assert int(pidfile.read_text()) == pid

    assert demo("--check", *common) == Outcome(0, "", "")

    assert demo("--stop", *common) == Outcome(0, "", "")
    assert process_gone(pid)
    assert not pidfile.exists()
    assert not port_open(port)
    assert demo("--stop", *common) == Outcome(0, "", "")  # idempotent
    assert demo("--check", *common).returncode == 1


def test_detach_uses_the_hook_environment(tmp_path: Path) -> None:
    port = free_port()
    env = {**child_env(tmp_path), "LLMUX_MODEL": "from-env", "LLMUX_PORT": str(port)}
    pidfile = tmp_path / "custom.pid"
    command = [sys.executable, "-m", "aiollmux", "demo-backend", "--pidfile", str(pidfile)]
    run = subprocess.run(
        [*command, "--detach"], env=env, capture_output=True, text=True,
        timeout=CHILD_DEADLINE_SECS, check=True,
    )  # fmt: skip
    try:
        assert "running on port" in run.stdout
        assert chat(port)["model"] == "from-env"
    finally:
        subprocess.run([*command, "--stop"], env=env, timeout=CHILD_DEADLINE_SECS, check=True)
    assert not pidfile.exists()


def test_check_when_the_pidfile_names_an_exited_process(demo: Demo, tmp_path: Path) -> None:
    port = free_port()
    pidfile = default_pidfile(tmp_path, port)
    pidfile.parent.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free now
    pidfile.write_text(f"{dead.pid}\n")
    result = demo("--check", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr == f"error: not running: process {dead.pid} named by {pidfile} is gone\n"


def patient_process(*argv: str) -> subprocess.Popen[str]:
    """A process that waits for its stdin to close; returned once it runs Python code."""
    code = "print('ready', flush=True); import sys; sys.stdin.read()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv], text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_pidfile_naming_another_program_is_never_signalled(demo: Demo, tmp_path: Path) -> None:
    """A pid reused by an unrelated process must not be stopped by `--stop`."""
    port = free_port()
    pidfile = default_pidfile(tmp_path, port)
    pidfile.parent.mkdir()
    with patient_process() as stranger:
        try:
            pidfile.write_text(f"{stranger.pid}\n")
            assert demo("--check", "--port", str(port)).returncode == 1
            assert demo("--stop", "--port", str(port)).returncode == 0
            assert stranger.poll() is None
            assert not pidfile.exists()
        finally:
            stranger.kill()


@pytest.mark.parametrize("content", ["", "garbage", "-5", "0"])
def test_unreadable_pidfile_means_not_running(tmp_path: Path, content: str) -> None:
    env = child_env(tmp_path)

    def demo(*args: str) -> Outcome:
        return in_process(env, *args)

    port = free_port()
    pidfile = tmp_path / "x.pid"
    pidfile.write_text(content)
    result = demo("--check", "--port", str(port), "--pidfile", str(pidfile))
    assert result.returncode == 1
    assert result.stderr == f"error: not running: {pidfile} holds no process id\n"
    assert demo("--stop", "--port", str(port), "--pidfile", str(pidfile)).returncode == 0
    assert not pidfile.exists()


def test_a_backend_that_never_listened_is_replaced(demo: Demo, tmp_path: Path) -> None:
    port = free_port()
    pidfile = default_pidfile(tmp_path, port)
    pidfile.parent.mkdir()
    # A leftover of an interrupted wake: still "loading weights", not listening.
    stale_command = [sys.executable, "-m", "aiollmux", "demo-backend", "--port", str(port)]
    with subprocess.Popen([*stale_command, "--load-secs", "600"], env=child_env(tmp_path)) as stale:
        try:
            pidfile.write_text(f"{stale.pid}\n")
            check = demo("--check", "--port", str(port))
            assert check.returncode == 1
            assert check.stderr == (
                f"error: demo backend {stale.pid} is not answering on 127.0.0.1:{port}\n"
            )
            detached = demo("--detach", "--port", str(port))
            assert detached.returncode == 0, detached.stderr
            assert process_gone(stale.pid)  # stopped before the new one started
            fresh = int(pidfile.read_text())
            assert fresh != stale.pid
            assert demo("--check", "--port", str(port)).returncode == 0
        finally:
            stale.kill()
            demo("--stop", "--port", str(port))
    assert process_gone(fresh)


def test_detach_on_a_port_taken_by_another_program(demo: Demo, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = demo("--detach", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr == (
        f"error: port {port} is already taken by another program; not starting\n"
    )
    assert not default_pidfile(tmp_path, port).exists()


def test_detach_reports_a_backend_that_exits(demo: Demo, tmp_path: Path) -> None:
    # Bound but not listening: nothing answers there, yet the backend cannot bind it.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        result = demo("--detach", "--port", str(port))
    log = default_pidfile(tmp_path, port).with_suffix(".log")
    assert result.returncode == 1
    assert result.stderr == f"error: demo backend exited with status 1; see {log}\n"
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in log.read_text()
    assert not default_pidfile(tmp_path, port).exists()


def demo_processes(port: int) -> list[int]:
    """Live demo backends for `port`, found by their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"demo-backend" in argv and str(port).encode() in argv and proc.name.isdigit():
            found.append(int(proc.name))
    return found


def test_detach_gives_up_on_a_backend_that_never_gets_ready(demo: Demo, tmp_path: Path) -> None:
    port = free_port()
    log = default_pidfile(tmp_path, port).with_suffix(".log")
    result = demo("--detach", "--port", str(port), "--load-secs", "600", "--ready-timeout", "0.3")
    assert result.returncode == 1
    assert result.stderr == f"error: demo backend not ready after 0.3s; see {log}\n"
    assert not default_pidfile(tmp_path, port).exists()
    assert demo_processes(port) == []  # killed, not left loading in the background


def test_foreground_serve_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    ready_read, ready_write = os.pipe()
    command = [sys.executable, "-m", "aiollmux", "demo-backend", "--port", str(port)]
    command += ["--model", "fg", "--ready-fd", str(ready_write)]
    with subprocess.Popen(command, env=child_env(tmp_path), pass_fds=[ready_write]) as server:
        os.close(ready_write)
        try:
            with os.fdopen(ready_read, "rb") as ready:
                assert ready.read() == b"ready\n"  # EOF right after: the fd was closed
            assert chat(port)["model"] == "fg"
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=CHILD_DEADLINE_SECS) == 0
        finally:
            server.kill()


def test_foreground_serve_on_a_taken_port(demo: Demo) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = demo("--port", str(port))
    assert result.returncode == 1
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


async def test_serve_demo_in_process_until_sigterm() -> None:
    port = free_port()
    ready_read, ready_write = os.pipe()
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(ready_read, ready.set)
    settings = DemoSettings(model="inproc", port=port, token_delay=0, load_secs=0.01)
    server = asyncio.create_task(serve_demo(settings, ready_fd=ready_write))
    try:
        async with asyncio.timeout(CHILD_DEADLINE_SECS):
            await ready.wait()  # it listens, and its SIGTERM handler is installed
        assert os.read(ready_read, 64) == b"ready\n"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/health") as response,
        ):
            assert (await response.json())["model"] == "inproc"
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(CHILD_DEADLINE_SECS):
            await server
        assert not port_open(port)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler removed again
    finally:
        loop.remove_reader(ready_read)
        os.close(ready_read)
        server.cancel()


# -- stop's escalation, with processes that do not cooperate -------------------------------------

STUBBORN = (
    "import signal, sys\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)


def stubborn_process() -> subprocess.Popen[str]:
    """A process that ignores SIGTERM and passes for a demo backend (by its command line)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN, "demo-backend"], text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"  # SIGTERM is ignored from here on
    return proc


def test_stop_kills_a_backend_that_ignores_sigterm(tmp_path: Path) -> None:
    pidfile = tmp_path / "stubborn.pid"
    with stubborn_process() as proc:
        pidfile.write_text(f"{proc.pid}\n")
        demo_control.stop(pidfile, timeout=0.2)
        assert process_gone(proc.pid)
        assert not pidfile.exists()


def test_waiting_without_pidfd(tmp_path: Path) -> None:
    with stubborn_process() as proc:
        assert proc.stdin is not None
        assert demo_control.is_running(proc.pid)
        assert not demo_control._poll_gone(proc.pid, 0.05)  # it waits for its stdin
        proc.stdin.close()
        assert demo_control._poll_gone(proc.pid, CHILD_DEADLINE_SECS)
        assert not demo_control.is_running(proc.pid)


def test_wait_gone_for_a_pid_that_no_longer_exists() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert demo_control.wait_gone(proc.pid, 0)
