"""contrib/hooks/llamacpp against a fake `llama-server`, alone and behind the real daemon."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from aiollmux.config import hook_warnings, parse_config
from tests.contrib.conftest import HOOKS, HookLab
from tests.contrib.fake_containers import process_alive
from tests.support import free_port, running_daemon

MODEL_PATH = "m.gguf"  # relative: hooks run in the config's directory, the lab's tmp


@pytest.fixture(autouse=True)
def model_file(hook_lab: HookLab) -> Path:
    """The .gguf file wake checks for before starting the (fake) server."""
    path = hook_lab.tmp / MODEL_PATH
    path.write_bytes(b"GGUF")
    return path


def test_cycle_waits_for_health_and_for_the_process_to_exit(hook_lab: HookLab) -> None:
    lab = hook_lab
    lab.ok("llamacpp", "wake", LLAMA_MODEL_PATH=MODEL_PATH, LLAMA_ARGS="-ngl 99 -c 4096")
    # /health answered 503 "Loading model" for a while: the hook waited for the 200.
    state = lab.fake_state()
    assert state["loaded"] is True
    assert state["args"] == [
        "--host", "127.0.0.1", "--port", str(lab.port),
        "-m", MODEL_PATH, "-ngl", "99", "-c", "4096",
    ]  # fmt: skip
    server = state["pid"]
    assert lab.pid("llamacpp") == server
    lab.ok("llamacpp", "alive")
    lab.ok("llamacpp", "wake", LLAMA_MODEL_PATH=MODEL_PATH)  # running: nothing to do
    assert lab.fake_state()["pid"] == server

    # The fake takes FAKE_STOP_SECS to exit after SIGTERM: sleep returns only after that.
    lab.ok("llamacpp", "sleep", FAKE_STOP_SECS="0.5")
    assert not process_alive(server)
    assert lab.pid("llamacpp") is None
    assert lab.fails("llamacpp", "alive") == (
        f"llamacpp: llama-server is not healthy on port {lab.port} (/health: nothing answers)"
    )
    lab.ok("llamacpp", "sleep")  # nothing runs: nothing to do


def test_a_server_ignoring_sigterm_is_killed(hook_lab: HookLab) -> None:
    lab = hook_lab
    lab.ok("llamacpp", "wake", LLAMA_MODEL_PATH=MODEL_PATH, FAKE_IGNORE_TERM="1")
    server = lab.pid("llamacpp")
    assert server is not None
    lab.ok("llamacpp", "sleep", STOP_GRACE_SECS="1")
    assert not process_alive(server)


def test_failures_are_one_clear_line(hook_lab: HookLab) -> None:
    lab = hook_lab
    assert lab.fails("llamacpp", "wake") == (
        "llamacpp: set LLAMA_MODEL_PATH to the .gguf file"
        " (or LLAMA_ARGS, e.g. '-hf ggml-org/gemma-3-1b-it-GGUF')"
    )
    line = lab.fails("llamacpp", "wake", LLAMA_MODEL_PATH=MODEL_PATH, FAKE_CRASH="1")
    assert line.startswith("llamacpp: llama-server exited while starting (last log line: error:")
    line = lab.fails(
        "llamacpp", "wake", LLAMA_MODEL_PATH=MODEL_PATH, FAKE_LOAD_SECS="30", WAKE_TIMEOUT_SECS="1"
    )
    assert line == (
        f"llamacpp: timed out after 1s waiting for llama-server to answer on port {lab.port}"
    )
    lab.ok("llamacpp", "sleep")  # the clean-up after that failed wake stops the loading server
    assert not lab.port_answers()


def test_a_foreign_server_on_the_port_is_not_taken_for_ours(hook_lab: HookLab) -> None:
    lab = hook_lab
    lab.start_fake("llama-server", "-m", "x", "--port", str(lab.port), FAKE_LOAD_SECS="30")
    assert lab.fails("llamacpp", "wake", LLAMA_MODEL_PATH=MODEL_PATH) == (
        f"llamacpp: port {lab.port} answers /health with HTTP 503 but no llama-server"
        " started by these hooks runs: is another program on that port?"
    )
    assert lab.fails("llamacpp", "sleep") == (
        f"llamacpp: a server still answers on port {lab.port} (HTTP 503) but none started by"
        f" these hooks runs (no live process in {lab.run_dir}/llamacpp-{lab.port}.pid):"
        " stop it yourself"
    )


async def test_the_snippet_switches_models_through_the_daemon(
    hook_lab: HookLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """contrib/hooks/llamacpp/llmux.toml as a user pastes it, with ./hooks beside it."""
    shutil.copytree(HOOKS, tmp_path / "hooks")
    snippet = (HOOKS / "llamacpp" / "llmux.toml").read_text()
    ports = iter([free_port(), free_port()])
    text = re.sub(r"(?m)^port = \d+$", lambda _: f"port = {next(ports)}", snippet)
    for model_path in re.findall(r"LLAMA_MODEL_PATH=(\S+)", text):
        local = tmp_path / Path(model_path).name
        local.write_bytes(b"GGUF")
        text = text.replace(model_path, str(local))
    text = f"port = {free_port()}\nalive_interval_secs = 0\n" + text
    config = parse_config(text, str(tmp_path / "llmux.toml"), base_dir=tmp_path)
    assert hook_warnings(config) == []
    for name, value in hook_lab.env().items():
        monkeypatch.setenv(name, value)

    async with running_daemon(config) as daemon:
        async with await daemon.chat("qwen2.5-coder-7b") as response:
            assert response.status == 200
            first = (await response.json())["served_by"]
        async with await daemon.chat("gemma-3-12b") as response:
            assert response.status == 200
            second = (await response.json())["served_by"]
        # The sleep hook returned only once the first server had exited: the GPU was free
        # before the second one started.
        assert not process_alive(first)
        assert process_alive(second)
        status = await daemon.status()
        assert status["active_model"] == "gemma-3-12b"
