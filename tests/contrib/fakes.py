"""Fake model servers for the contrib hook tests, run as a program.

`fakes.py KIND ARGS…` where KIND is `vllm`, `llama-server`, `ollama`, `sglang` or `container`
(the server in a container of `fake_containers.py`). Each mimics the part of its backend's
HTTP API the hooks use, including the delays that make a hook wrong when it does not wait
for the real state: loading before it answers, memory freed only after the answer,
processes that take a moment to exit after SIGTERM. `GET /_fake/state` tells a test what
the server believes. Settings come from FAKE_* environment variables (see `_Knobs`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


@dataclass(frozen=True)
class _Knobs:
    load_secs: float = float(os.environ.get("FAKE_LOAD_SECS", "0.1"))
    stop_secs: float = float(os.environ.get("FAKE_STOP_SECS", "0.2"))
    transition_secs: float = float(os.environ.get("FAKE_TRANSITION_SECS", "0.2"))
    ignore_term: bool = os.environ.get("FAKE_IGNORE_TERM") == "1"
    crash: bool = os.environ.get("FAKE_CRASH") == "1"
    lifetime_secs: float = float(os.environ.get("FAKE_LIFETIME_SECS", "120"))
    state_dir: Path = Path(os.environ.get("FAKE_STATE_DIR", "."))


KNOBS = _Knobs()


def option(args: list[str], name: str, default: str | None = None) -> str | None:
    return args[args.index(name) + 1] if name in args else default


# --- the HTTP servers ---------------------------------------------------------------


LOADED = asyncio.Event()  # set once the (fake) model is loaded


def serve(
    routes: dict[str, Handler],
    port: int,
    *,
    listen_after_load: bool,
    stop_secs: float = KNOBS.stop_secs,
) -> None:
    """Serve `routes` on 127.0.0.1:port until SIGTERM. A key is "METHOD /path" (the method
    the real server takes: a hook using another one fails here as it would there), or
    "/path" for any method (the fakes' own `/_fake/state`).

    The model loads for FAKE_LOAD_SECS, before or after the port opens. SIGTERM ends the
    process `stop_secs` later (never, with FAKE_IGNORE_TERM=1); every fake ends after
    FAKE_LIFETIME_SECS anyway, so none outlives a broken test for long.
    """
    from aiohttp import web

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if KNOBS.ignore_term:
            loop.add_signal_handler(signal.SIGTERM, lambda: None)
        else:
            loop.add_signal_handler(signal.SIGTERM, lambda: loop.call_later(stop_secs, os._exit, 0))
        loop.call_later(KNOBS.lifetime_secs, os._exit, 3)
        if listen_after_load:
            await _load()
        app = web.Application()
        for key, handler in routes.items():
            method, _, path = key.rpartition(" ")
            app.router.add_route(method or "*", path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"listening on {port}", flush=True)
        if not listen_after_load:
            await _load()
        await asyncio.Event().wait()

    asyncio.run(main())


async def _load() -> None:
    if LOADED.is_set():
        return
    if KNOBS.crash:
        await asyncio.sleep(KNOBS.load_secs / 2)
        print("error: failed to load model: out of memory", file=sys.stderr, flush=True)
        os._exit(1)
    await asyncio.sleep(KNOBS.load_secs)
    LOADED.set()


def json_answer(data: object, status: int = 200) -> web.Response:
    from aiohttp import web

    return web.json_response(data, status=status)


async def body_of(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    data = json.loads(raw) if raw.strip() else {}
    assert isinstance(data, dict)
    return data


@dataclass
class Calls:
    """Requests the hooks made, for tests to check (`GET /_fake/state`)."""

    made: list[str] = field(default_factory=list)

    def record(self, request: web.Request) -> None:
        self.made.append(f"{request.method} {request.path_qs}")


# --- vLLM (sleep mode) --------------------------------------------------------------


@dataclass
class FakeVllm:
    args: list[str]
    dev_mode: bool = os.environ.get("VLLM_SERVER_DEV_MODE") == "1"
    weights: str = "gpu"  # gpu | cpu (level 1) | discarded (level 2)
    weights_valid: bool = True
    kv_cache: str = "gpu"  # gpu | discarded
    calls: Calls = field(default_factory=Calls)

    @property
    def sleeping(self) -> bool:
        return self.weights != "gpu" or self.kv_cache != "gpu"

    def routes(self) -> dict[str, Handler]:
        dev = {
            "POST /sleep": self.sleep,
            "POST /wake_up": self.wake_up,
            "GET /is_sleeping": self.is_sleeping,
            "POST /collective_rpc": self.collective_rpc,
        }
        routes: dict[str, Handler] = {
            "GET /health": self.health,
            "GET /v1/models": self.models,
            "POST /v1/completions": self.complete,
            "/_fake/state": self.state,
        }
        return {**routes, **dev} if self.dev_mode else routes

    async def models(self, request: web.Request) -> web.StreamResponse:
        return json_answer({"data": [{"id": self.args[1]}]})  # `vllm serve MODEL`

    async def health(self, request: web.Request) -> web.StreamResponse:
        return json_answer({})

    async def state(self, request: web.Request) -> web.StreamResponse:
        return json_answer(
            {
                "sleeping": self.sleeping,
                "weights": self.weights,
                "weights_valid": self.weights_valid,
                "kv_cache": self.kv_cache,
                "calls": self.calls.made,
                "args": self.args,
                "dev_mode": self.dev_mode,
            }
        )

    async def sleep(self, request: web.Request) -> web.StreamResponse:
        self.calls.record(request)
        if "--enable-sleep-mode" not in self.args:
            return json_answer({"error": "sleep mode is not enabled"}, 500)
        level = request.query.get("level", "1")
        # As in vLLM V0, the answer comes first and the memory is freed after it: only
        # /is_sleeping tells.
        asyncio.get_running_loop().call_later(KNOBS.transition_secs, self._fall_asleep, level)
        return json_answer({})

    def _fall_asleep(self, level: str) -> None:
        self.kv_cache = "discarded"
        if level == "2":
            self.weights, self.weights_valid = "discarded", False
        else:
            self.weights = "cpu"

    async def wake_up(self, request: web.Request) -> web.StreamResponse:
        self.calls.record(request)
        tags = request.query.getall("tags", [])
        if tags:  # tags came with vLLM V1, whose /wake_up answers once it is done
            await asyncio.sleep(KNOBS.transition_secs)
            self._wake(tags)
        else:  # V0 answered before it was done: only /is_sleeping tells
            loop = asyncio.get_running_loop()
            loop.call_later(KNOBS.transition_secs, self._wake, ["weights", "kv_cache"])
        return json_answer({})

    def _wake(self, tags: list[str]) -> None:
        if "weights" in tags:
            self.weights = "gpu"  # still garbage after a level-2 sleep until reload_weights
        if "kv_cache" in tags:
            self.kv_cache = "gpu"

    async def is_sleeping(self, request: web.Request) -> web.StreamResponse:
        return json_answer({"is_sleeping": self.sleeping})

    async def collective_rpc(self, request: web.Request) -> web.StreamResponse:
        self.calls.record(request)
        body = await body_of(request)
        if body.get("method") != "reload_weights" or self.weights != "gpu":
            return json_answer({"error": f"cannot run {body} with weights {self.weights}"}, 500)
        self.weights_valid = True
        return json_answer({"results": [None]})

    async def complete(self, request: web.Request) -> web.StreamResponse:
        if self.sleeping:
            return json_answer({"error": "the model is sleeping"}, 503)
        if not self.weights_valid:
            return json_answer({"error": "garbage weights: woken without reload_weights"}, 500)
        return json_answer({"choices": [{"text": "hello"}]})


def run_vllm(args: list[str]) -> None:
    assert args[:1] == ["serve"], args
    # The engine core: a second process in the server's group that holds GPU memory and takes
    # a while to exit after SIGTERM, while the API server leaves at once.
    worker = subprocess.Popen([sys.executable, __file__, "worker"])
    (KNOBS.state_dir / f"vllm-worker-{option(args, '--port')}.pid").write_text(str(worker.pid))
    port = int(option(args, "--port") or 0)
    serve(FakeVllm(args).routes(), port, listen_after_load=True, stop_secs=0)


def run_worker() -> None:
    def stop_slowly(signum: int, frame: object) -> None:
        time.sleep(KNOBS.stop_secs)  # freeing GPU memory takes a moment
        os._exit(0)

    signal.signal(signal.SIGTERM, stop_slowly)
    time.sleep(KNOBS.lifetime_secs)


# --- llama-server and the server in a fake container ----------------------------------


def run_llama_server(args: list[str], *, restored: bool = False) -> None:
    if "-m" not in args and "-hf" not in args:
        print("error: no model given (-m or -hf)", file=sys.stderr)
        sys.exit(1)
    if restored:
        LOADED.set()

    async def health(request: web.Request) -> web.StreamResponse:
        if not LOADED.is_set():
            error = {"code": 503, "message": "Loading model", "type": "unavailable_error"}
            return json_answer({"error": error}, 503)
        return json_answer({"status": "ok"})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        return json_answer({"model": body.get("model"), "served_by": os.getpid()})

    async def state(request: web.Request) -> web.StreamResponse:
        return json_answer({"pid": os.getpid(), "args": args, "loaded": LOADED.is_set()})

    routes: dict[str, Handler] = {
        "GET /health": health,
        "POST /v1/chat/completions": chat,
        "/_fake/state": state,
    }
    serve(routes, int(option(args, "--port") or 0), listen_after_load=False)


# --- Ollama ---------------------------------------------------------------------------


@dataclass
class FakeOllama:
    known: list[str]
    loaded: dict[str, bool] = field(default_factory=dict)  # tag -> being unloaded
    calls: Calls = field(default_factory=Calls)

    def routes(self) -> dict[str, Handler]:
        return {
            "GET /api/version": self.version,
            "POST /api/generate": self.generate,
            "GET /api/ps": self.ps,
            "/_fake/state": self.state,
        }

    async def version(self, request: web.Request) -> web.StreamResponse:
        return json_answer({"version": "0.0.0-fake"})

    async def state(self, request: web.Request) -> web.StreamResponse:
        return json_answer({"loaded": sorted(self.loaded), "calls": self.calls.made})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        self.calls.made.append(json.dumps(body, sort_keys=True))
        name = str(body["model"])
        # Ollama's short form of a name: default registry and namespace dropped, tag added.
        short = name.removeprefix("registry.ollama.ai/").removeprefix("library/")
        tag = short if ":" in short else f"{short}:latest"
        if tag not in self.known:
            return json_answer({"error": f'model "{name}" not found, try pulling it first'}, 404)
        if body.get("keep_alive") == 0:
            if tag in self.loaded:
                # Answered now, unloaded later: the runner frees its memory after the reply.
                self.loaded[tag] = True
                asyncio.get_running_loop().call_later(
                    KNOBS.transition_secs, self.loaded.pop, tag, None
                )
            return json_answer({"model": name, "done": True, "done_reason": "unload"})
        await asyncio.sleep(KNOBS.load_secs)
        self.loaded[tag] = False
        return json_answer({"model": name, "response": "", "done": True, "done_reason": "load"})

    async def ps(self, request: web.Request) -> web.StreamResponse:
        models = [
            {"name": tag, "model": tag, "size": 1, "size_vram": 1, "details": {"format": "gguf"}}
            for tag in self.loaded
        ]
        return json_answer({"models": models})


def run_ollama(args: list[str]) -> None:
    assert args == ["serve"], args
    port = int(os.environ["OLLAMA_HOST"].rpartition(":")[2])
    known = os.environ.get("FAKE_OLLAMA_MODELS", "qwen3:8b,llama3.2:latest").split(",")
    LOADED.set()
    serve(FakeOllama(known).routes(), port, listen_after_load=True)


# --- SGLang (memory saver) ------------------------------------------------------------


@dataclass
class FakeSglang:
    """Like SGLang's memory saver: a release frees the weights' memory without saving
    them unless --enable-weights-cpu-backup was given, so after a resume the model
    answers garbage (sgl-project/sglang#6367). /health does not notice."""

    args: list[str]
    released: bool = False
    weights_valid: bool = True
    calls: Calls = field(default_factory=Calls)

    def routes(self) -> dict[str, Handler]:
        return {
            "GET /health": self.health,
            "GET /v1/models": self.models,
            "POST /v1/completions": self.complete,
            "POST /release_memory_occupation": self.release,
            "POST /resume_memory_occupation": self.resume,
            "/_fake/state": self.state,
        }

    async def health(self, request: web.Request) -> web.StreamResponse:
        return json_answer({}, 200 if LOADED.is_set() else 503)

    async def complete(self, request: web.Request) -> web.StreamResponse:
        if self.released:
            return json_answer({"error": "the memory is released"}, 503)
        if not self.weights_valid:
            return json_answer({"error": "garbage weights: resumed without a backup"}, 500)
        return json_answer({"choices": [{"text": "hello"}]})

    async def models(self, request: web.Request) -> web.StreamResponse:
        return json_answer({"data": [{"id": option(self.args, "--model-path")}]})

    async def state(self, request: web.Request) -> web.StreamResponse:
        return json_answer({"released": self.released, "calls": self.calls.made})

    async def release(self, request: web.Request) -> web.StreamResponse:
        self.calls.record(request)
        await body_of(request)
        if "--enable-memory-saver" not in self.args:
            return json_answer({"error": "memory saver is not enabled"}, 500)
        if self.released:  # torch_memory_saver cannot pause twice
            return json_answer({"error": "memory is already released"}, 500)
        await asyncio.sleep(KNOBS.transition_secs)  # synchronous: answered once freed
        self.released = True
        self.weights_valid = "--enable-weights-cpu-backup" in self.args
        return json_answer(None)

    async def resume(self, request: web.Request) -> web.StreamResponse:
        self.calls.record(request)
        await body_of(request)
        if not self.released:
            return json_answer({"error": "memory is not released"}, 500)
        await asyncio.sleep(KNOBS.transition_secs)
        self.released = False
        return json_answer(None)


def run_sglang(args: list[str]) -> None:
    assert args[:2] == ["-m", "sglang.launch_server"], args
    serve(FakeSglang(args).routes(), int(option(args, "--port") or 0), listen_after_load=False)


def main(argv: list[str]) -> int:
    kind, args = argv[0], argv[1:]
    runners: dict[str, Callable[[], None]] = {
        "vllm": lambda: run_vllm(args),
        "worker": run_worker,
        "llama-server": lambda: run_llama_server(args),
        "container": lambda: run_llama_server(
            ["-m", "x", *args], restored=os.environ.get("FAKE_RESTORED") == "1"
        ),
        "ollama": lambda: run_ollama(args),
        "sglang": lambda: run_sglang(args),
    }
    runners[kind]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
