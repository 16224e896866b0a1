"""`aiollmux test-hooks MODEL` (docs/design.md §14) against the demo backend and hooks that fail."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import tomli_w
from click.testing import CliRunner, Result

from aiollmux.cli import main
from aiollmux.config import load_config
from aiollmux.tools.starter import starter_document
from tests.support import Lab, free_port, running_daemon

STEPS = [
    "alive (starting state)", "wake", "backend answers", "alive", "sleep", "port closed",
    "alive fails", "wake again", "wake when awake", "sleep again", "sleep when asleep",
]  # fmt: skip


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def demo_config(tmp: Path, **hooks: str) -> Path:
    """The starter config (the demo backend's hooks) on free ports; `hooks` replace demo-small's."""
    document: dict[str, Any] = starter_document()
    document["port"] = free_port()
    for model in document["models"].values():
        model["port"] = free_port()
        model["wake"] = model["wake"].replace("--load-secs 0.5", "--load-secs 0")
    document["models"]["demo-small"].update(hooks)
    path = tmp / "llmux.toml"
    path.write_bytes(tomli_w.dumps(document).encode())
    return path


def test_the_demo_backend_passes_every_step(tmp_path: Path) -> None:
    path = demo_config(tmp_path)
    result = invoke("test-hooks", "demo-small", "-c", str(path), "--request")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["STEP", "RESULT", "TIME", "DETAIL"]
    names = [line[:22].strip() for line in lines[1:13]]
    assert names == [*STEPS[:4], "chat request", *STEPS[4:]]
    assert all(" pass " in line for line in lines[1:13])
    assert "asleep (alive failed)" in lines[1]
    assert "HTTP 200" in lines[5]
    assert lines[-1] == "demo-small: all steps passed"
    assert "testing the hooks of demo-small" in result.stderr


def test_json_output_and_the_port_left_free(tmp_path: Path) -> None:
    path = demo_config(tmp_path)
    result = invoke("test-hooks", "demo-small", "-c", str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert [step["name"] for step in report["steps"]] == STEPS
    assert report["not_run"] == []
    assert all(step["seconds"] >= 0 and step["output"] == [] for step in report["steps"])
    # A second run starts from the same state: everything was put back to sleep.
    again = json.loads(invoke("test-hooks", "demo-small", "-c", str(path), "--json").stdout)
    assert again["steps"][0]["detail"] == "asleep (alive failed)"


def test_a_failing_wake_shows_its_last_lines_stops_and_cleans_up(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    j = shlex.quote(str(journal))
    wake = 'for i in 1 2 3 4 5 6 7 8 9 10; do echo "loading step $i" >&2; done; exit 3'
    path = demo_config(tmp_path, wake=wake, sleep=f"echo sleep >> {j}")
    result = invoke("test-hooks", "demo-small", "-c", str(path))
    assert result.exit_code == 1
    out = result.stdout
    assert "wake                    FAIL" in out
    assert "wake hook of 'demo-small' exited with status 3" in out
    shown = [line for line in out.splitlines() if line.startswith("    | ")]
    assert shown == [f"    | loading step {i}" for i in range(3, 11)]  # the last 8 lines
    assert "backend answers         not run" in out
    assert out.rstrip().endswith("demo-small: FAILED")
    assert journal.read_text() == "sleep\n"  # the clean-up sleep, as the daemon does


def test_a_server_left_up_by_sleep_fails_unless_it_is_allowed(tmp_path: Path) -> None:
    python = shlex.quote(sys.executable)
    server = f"{python} -m aiollmux demo-backend --detach"
    # Sleep that does nothing: the demo backend keeps answering; alive says "asleep".
    state = shlex.quote(str(tmp_path / "awake"))
    hooks = {
        "wake": f"{server} && touch {state}",
        "sleep": f"rm -f {state}",
        "alive": f"test -e {state}",
    }
    path = demo_config(tmp_path, **hooks)
    try:
        result = invoke("test-hooks", "demo-small", "-c", str(path))
        assert result.exit_code == 1
        assert "port closed             FAIL" in result.stdout
        assert "still answers (HTTP 200) after sleep" in result.stdout
        assert "pass --server-stays" in result.stdout
        stays = invoke("test-hooks", "demo-small", "-c", str(path), "--server-stays")
        assert stays.exit_code == 0, stays.output
        assert "server still up (allowed)" in stays.stdout
    finally:
        invoke("demo-backend", "--stop", "--port", str(load_config(path).models["demo-small"].port))


def test_an_alive_hook_that_always_passes_is_caught(tmp_path: Path) -> None:
    path = demo_config(tmp_path, alive="true")
    result = invoke("test-hooks", "demo-small", "-c", str(path))
    assert result.exit_code == 1
    assert "alive fails             FAIL" in result.stdout
    assert "alive passed with the model asleep" in result.stdout


def test_an_unknown_model_is_a_usage_error(tmp_path: Path) -> None:
    path = demo_config(tmp_path)
    result = invoke("test-hooks", "nope", "-c", str(path))
    assert result.exit_code == 2
    assert result.stderr == (f"error: no model 'nope' in {path} (models: demo-large, demo-small)\n")


async def _test_hooks(path: Path, model: str, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiollmux", "test-hooks", model, "-c", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_refuses_while_a_daemon_has_the_model_awake(lab: Lab) -> None:
    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    path.write_text(lab.config_text(top='admin_token = "secret"\n'))
    config = load_config(path)
    async with running_daemon(config) as daemon:
        headers = {"Authorization": "Bearer secret"}
        payload = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}
        async with daemon.client.post(
            daemon.url + "/v1/chat/completions", json=payload, headers=headers
        ) as response:
            assert response.status == 200
        code, out, err = await _test_hooks(path, "alpha", LLMUX_ADMIN_TOKEN="secret")
        assert code == 1
        assert out == ""
        assert err == (
            f"error: the daemon on 127.0.0.1:{config.port} has 'alpha' active: put it to sleep"
            " first (`aiollmux sleep`) or stop the daemon, then test its hooks\n"
        )
        code, _, err = await _test_hooks(path, "alpha", LLMUX_ADMIN_TOKEN="")
        assert code == 1
        assert "refuses /admin/status (HTTP 401): set LLMUX_ADMIN_TOKEN" in err
    assert lab.journal.count("start sleep alpha") == 0  # test-hooks ran no hook
