"""`aiollmux test-hooks MODEL` (docs/design.md §14): one model's hooks tried as the daemon would run
them, without a daemon: alive, wake, the backend answering, alive, an optional request,
sleep, the port closed, alive failing, then wakes and sleeps again for idempotence.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from aiollmux import presets
from aiollmux.config import Config, HookName, ModelConfig
from aiollmux.hooks import HookResult, HookRunner

OUTPUT_LINES: Final = 8  # of a failed hook's output, in the table
PROBE_TIMEOUT_SECS: Final = 5.0
REQUEST_TIMEOUT_SECS: Final = 120.0
AWAKE_STATES: Final = ("active", "waking", "draining", "sleeping")


class RefusedError(Exception):
    """A daemon serves the model now: trying its hooks would fight the daemon for it."""


@dataclass(slots=True)
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""
    output: list[str] = field(default_factory=list)  # the hook's last lines, on failure

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Report:
    model: str
    steps: list[Step] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps) and not self.not_run

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ok": self.ok,
            "steps": [step.as_json() for step in self.steps],
            "not_run": self.not_run,
        }

    def render(self) -> str:
        rows = [("STEP", "RESULT", "TIME", "DETAIL")]
        rows += [
            (s.name, "pass" if s.ok else "FAIL", f"{s.seconds:.2f}s", s.detail) for s in self.steps
        ]
        rows += [(name, "not run", "-", "") for name in self.not_run]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = []
        for index, row in enumerate(rows):
            cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
            lines.append("  ".join([*cells, row[3]]).rstrip())
            step = self.steps[index - 1] if 0 < index <= len(self.steps) else None
            if step is not None and not step.ok:
                lines += [f"    | {line}" for line in step.output]
        verdict = "all steps passed" if self.ok else "FAILED"
        lines.append(f"\n{self.model}: {verdict}")
        return "\n".join(lines)


def plan(model: ModelConfig, *, request: bool, server_stays: bool) -> list[str]:
    """The names of the steps, in order (shown as "not run" after a failure)."""
    preset = presets.get(model.preset) if model.preset else None
    stays = server_stays or (preset is not None and preset.server_stays_on_sleep)
    steps = ["alive (starting state)", "wake", "backend answers", "alive"]
    steps += ["chat request"] if request else []
    steps += ["sleep", "server still up (allowed)" if stays else "port closed"]
    steps += ["alive fails", "wake again", "wake when awake", "sleep again", "sleep when asleep"]
    return steps


async def check_hooks(
    config: Config, model: ModelConfig, *, request: bool = False, server_stays: bool = False
) -> Report:
    runner = HookRunner()
    report = Report(model.id)
    checker = _Checker(config, model, runner, report)
    try:
        await checker.run(plan(model, request=request, server_stays=server_stays))
    finally:
        await runner.close()
    return report


class _Checker:
    def __init__(self, config: Config, model: ModelConfig, runner: HookRunner, report: Report):
        self.config = config
        self.model = model
        self.runner = runner
        self.report = report
        self.backend = f"http://127.0.0.1:{model.port}"

    async def run(self, names: list[str]) -> None:
        steps: dict[str, Callable[[], Awaitable[Step]]] = {
            "alive (starting state)": self.starting_state,
            "wake": lambda: self.hook("wake", "wake"),
            "backend answers": self.backend_answers,
            "alive": lambda: self.hook("alive", "alive"),
            "chat request": self.chat_request,
            "sleep": lambda: self.hook("sleep", "sleep"),
            "port closed": self.port_closed,
            "server still up (allowed)": self.server_stays,
            "alive fails": self.alive_fails,
            "wake again": lambda: self.hook("wake again", "wake"),
            "wake when awake": lambda: self.hook("wake when awake", "wake"),
            "sleep again": lambda: self.hook("sleep again", "sleep"),
            "sleep when asleep": lambda: self.hook("sleep when asleep", "sleep"),
        }
        for index, name in enumerate(names):
            step = await steps[name]()
            self.report.steps.append(step)
            if not step.ok:
                self.report.not_run = names[index + 1 :]
                if "sleep" not in name:
                    # As the daemon does after a failed wake: leave nothing running.
                    await self.runner.run(self.model, "sleep", self.config.base_dir, report=False)
                return

    async def _run(self, hook: HookName) -> HookResult:
        return await self.runner.run(self.model, hook, self.config.base_dir, report=False)

    async def hook(self, name: str, hook: HookName) -> Step:
        result = await self._run(hook)
        return _hook_step(name, result, ok=result.ok)

    async def starting_state(self) -> Step:
        result = await self._run("alive")
        state = "awake (alive passed)" if result.ok else "asleep (alive failed)"
        if result.timed_out:
            return _hook_step("alive (starting state)", result, ok=False)
        return Step("alive (starting state)", True, result.duration, state)

    async def alive_fails(self) -> Step:
        result = await self._run("alive")
        step = _hook_step("alive fails", result, ok=not result.ok and not result.timed_out)
        step.detail = "failed, as it must" if step.ok else "alive passed with the model asleep"
        return step

    async def backend_answers(self) -> Step:
        started = time.monotonic()
        answers = []
        async with aiohttp.ClientSession() as session:
            for path in ("/v1/models", "/health"):
                status = await _probe(session, self.backend + path)
                if status == 200:
                    return Step("backend answers", True, _since(started), f"GET {path}: 200")
                answers.append(f"GET {path}: {status or 'nothing answers'}")
        return Step("backend answers", False, _since(started), "; ".join(answers))

    async def port_closed(self) -> Step:
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            status = await _probe(session, self.backend + "/health")
        if status is None:
            return Step("port closed", True, _since(started), "nothing answers")
        detail = (
            f"port {self.model.port} still answers (HTTP {status}) after sleep; if this"
            " engine's sleep keeps the server up, pass --server-stays"
        )
        return Step("port closed", False, _since(started), detail)

    async def server_stays(self) -> Step:
        return Step("server still up (allowed)", True, 0.0, "not checked: sleep keeps it up")

    async def chat_request(self) -> Step:
        started = time.monotonic()
        body = {
            "model": self.model.upstream_model or self.model.id,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 8,
        }
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECS)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(self.backend + "/v1/chat/completions", json=body) as response,
            ):
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            return Step("chat request", False, _since(started), f"no answer: {error!r}")
        try:
            answer = json.loads(text)
            content = answer["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return Step("chat request", False, _since(started), f"HTTP {status}: {text[:200]}")
        ok = status == 200
        detail = f"HTTP {status}: {json.dumps(content)[:60]}"
        return Step("chat request", ok, _since(started), detail)


def _hook_step(name: str, result: HookResult, *, ok: bool) -> Step:
    detail = "" if result.ok else result.describe().split(": ", 1)[0]
    output = (result.stdout + result.stderr).strip().splitlines()[-OUTPUT_LINES:]
    return Step(name, ok, result.duration, detail, [] if ok else output)


def _since(started: float) -> float:
    return time.monotonic() - started


async def _probe(session: aiohttp.ClientSession, url: str) -> int | None:
    """The HTTP status `url` answers with, or None if nothing answers."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_SECS)) as r:
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def refuse_if_daemon_has_it_awake(config: Config, model: str, token: str | None) -> None:
    """Raise `RefusedError` if a daemon on the config's port has `model` awake; a daemon that
    does not answer is no daemon."""
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    url = f"http://{host}:{config.port}/admin/status"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_SECS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=headers) as response,
        ):
            status = response.status
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return
    if status in (401, 403):
        raise RefusedError(
            f"a daemon answers on {host}:{config.port} but refuses /admin/status (HTTP {status}):"
            " set LLMUX_ADMIN_TOKEN so test-hooks can see whether it serves the model"
        )
    try:
        state = json.loads(text)["models"][model]["state"]
    except (ValueError, KeyError, TypeError):
        return  # not an aiollmux that knows this model
    if state in AWAKE_STATES:
        raise RefusedError(
            f"the daemon on {host}:{config.port} has {model!r} {state}: put it to sleep first"
            " (`aiollmux sleep`) or stop the daemon, then test its hooks"
        )
