"""`aiollmux demo-backend`: a small OpenAI-compatible fake model server that streams tokens.

The default `llmux.toml` wakes and sleeps these, so aiollmux runs on a machine with no
GPU. The hooks' `--detach`/`--stop`/`--check` live in `aiollmux.tools.demo_control`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from typing import Any

from aiohttp import web

from aiollmux.tools.demo_control import DemoSettings

__all__ = ["DemoSettings", "build_demo_app", "serve_demo"]


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
                "usage": {
                    "prompt_tokens": 1,
                    "completion_tokens": len(words),
                    "total_tokens": 1 + len(words),
                },
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


async def serve_demo(settings: DemoSettings, *, ready_fd: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT; once listening, write a line to `ready_fd` and close it."""
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
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
