"""`aiollmux demo-backend`: a small OpenAI-compatible fake model server that streams tokens.

The default `llmux.toml` wakes and sleeps these, so aiollmux runs on a machine with no
GPU. `--detach`/`--stop`/`--check` with a pidfile let POSIX sh hooks manage them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

_READY_POLL_SECS = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoSettings:
    model: str
    port: int
    host: str = "127.0.0.1"
    token_delay: float = 0.02
    load_secs: float = 0.0


def _reply_words(model: str, prompt: str) -> list[str]:
    said = " ".join(prompt.split()[:12]) or "nothing"
    text = f"Hello from {model}! This is a demo backend, not a real model. You said: {said}"
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _last_prompt(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        content = messages[-1].get("content") if isinstance(messages[-1], dict) else None
        return content if isinstance(content, str) else ""
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def build_demo_app(settings: DemoSettings) -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "invalid JSON"}}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": {"message": "expected an object"}}, status=400)
        chat = request.path.endswith("/chat/completions")
        words = _reply_words(settings.model, _last_prompt(body))[: _max_tokens(body)]
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:12]}"
        if body.get("stream"):
            return await _stream(request, settings, words, ident, chat)
        text = "".join(words)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": settings.model,
                "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": len(words)},
            }
        )

    async def models(request: web.Request) -> web.Response:
        entry = {"id": settings.model, "object": "model", "created": 0, "owned_by": "demo"}
        return web.json_response({"object": "list", "data": [entry]})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": settings.model})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


async def _stream(
    request: web.Request, settings: DemoSettings, words: list[str], ident: str, chat: bool
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    created = int(time.time())
    for index, word in enumerate(words):
        last = index == len(words) - 1
        if chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": word}}
        else:
            choice = {"index": 0, "text": word}
        choice["finish_reason"] = "stop" if last else None
        event = {
            "id": ident,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": settings.model,
            "choices": [choice],
        }
        await response.write(f"data: {json.dumps(event)}\n\n".encode())
        if settings.token_delay > 0 and not last:
            await asyncio.sleep(settings.token_delay)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def serve_demo(settings: DemoSettings) -> None:
    if settings.load_secs > 0:
        await asyncio.sleep(settings.load_secs)  # pretend to load weights
    runner = web.AppRunner(build_demo_app(settings), access_log=None, handler_cancellation=True)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, settings.host, settings.port, reuse_address=True).start()
        await stop.wait()
    finally:
        await runner.cleanup()


# -- pidfile management for hooks ------------------------------------------------------


class DemoControlError(Exception):
    """A detach/stop/check step failed; the message is one line for a hook's stderr."""


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def check(settings: DemoSettings, pidfile: Path) -> None:
    pid = _read_pid(pidfile)
    if pid is None or not _alive(pid):
        raise DemoControlError(f"no demo backend running (pidfile {pidfile})")
    if not _port_open(settings.host, settings.port):
        raise DemoControlError(f"demo backend {pid} is not answering on port {settings.port}")


def detach(settings: DemoSettings, pidfile: Path, ready_timeout: float) -> int:
    """Start a backend in its own session; return its pid once it accepts connections."""
    pid = _read_pid(pidfile)
    if pid is not None and _alive(pid) and _port_open(settings.host, settings.port):
        return pid  # already running: waking twice is fine
    if _port_open(settings.host, settings.port):
        raise DemoControlError(f"port {settings.port} is already taken by another program")
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    log = pidfile.with_suffix(".log")
    command = [
        sys.executable, "-m", "aiollmux", "demo-backend",
        "--model", settings.model, "--port", str(settings.port), "--host", settings.host,
        "--token-delay", str(settings.token_delay), "--load-secs", str(settings.load_secs),
    ]  # fmt: skip
    with open(log, "ab") as output:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
            start_new_session=True,
        )  # fmt: skip
    pidfile.write_text(f"{child.pid}\n")
    deadline = time.monotonic() + ready_timeout
    while not _port_open(settings.host, settings.port):
        if child.poll() is not None:
            raise DemoControlError(f"demo backend exited with status {child.returncode}; see {log}")
        if time.monotonic() > deadline:
            child.kill()
            raise DemoControlError(f"demo backend not ready after {ready_timeout:.0f}s")
        time.sleep(_READY_POLL_SECS)
    return child.pid


def stop(pidfile: Path, timeout: float = 10.0) -> None:
    """Stop the backend named by the pidfile and wait until it is gone (idempotent)."""
    pid = _read_pid(pidfile)
    if pid is not None and _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(_READY_POLL_SECS)
    pidfile.unlink(missing_ok=True)
