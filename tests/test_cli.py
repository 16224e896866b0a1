"""The command line (docs/design.md §11): `check`, `init`, `--version` through CliRunner, and
`run` as a real subprocess serving demo backends that its hooks start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tomli_w
from click.testing import CliRunner, Result

from aiollmux import __version__
from aiollmux.cli import _reason, main
from aiollmux.config import load_config, parse_config
from aiollmux.tools.starter import starter_document
from tests.support import child_env, daemon_process, free_port, process_gone

REPO = Path(__file__).resolve().parents[1]
HOOKS = 'wake = "true"\nsleep = "true"\nalive = "true"\n'
# Bounds for a child process; the tests synchronise on its output, never on these.
CHILD_DEADLINE_SECS = 30.0


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


@contextlib.contextmanager
def preserved_logging() -> Iterator[None]:
    """`run` reconfigures the root logger for its process; put it back for pytest."""
    root, package = logging.getLogger(), logging.getLogger("aiollmux")
    handlers, levels = list(root.handlers), (root.level, package.level)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(levels[0])
        package.setLevel(levels[1])


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- check --------------------------------------------------------------------------------


def test_check_prints_a_summary(tmp_path: Path) -> None:
    text = (
        "port = 4000\n[groups.gpu0]\n"
        f'[models.b]\nport = 8002\ngroup = "gpu0"\n{HOOKS}'
        f'[models."Qwen/Qwen2.5-7B"]\nport = 8001\naliases = ["qwen", "q"]\n{HOOKS}'
    )
    config = write(tmp_path / "llmux.toml", text)
    result = invoke("check", "-c", str(config))
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{config}: OK\n"
        "  listen: http://127.0.0.1:4000\n"
        "  policy: fifo\n"
        "  model Qwen/Qwen2.5-7B: port 8001 (aliases: qwen, q)\n"
        "  model b: port 8002 [group gpu0]\n"
    )
    assert result.stderr == ""


def test_check_reads_the_config_from_the_environment(tmp_path: Path) -> None:
    config = write(tmp_path / "elsewhere.toml", f"[models.m]\nport = 8001\n{HOOKS}")
    result = invoke("check", env={"LLMUX_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{config}: OK\n")


def test_check_defaults_to_llmux_toml_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "llmux.toml", f"[models.m]\nport = 8001\n{HOOKS}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMUX_CONFIG", raising=False)
    result = invoke("check")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("llmux.toml: OK\n")


BAD_CONFIGS = [
    (f"[models.llama]\nport = 0\n{HOOKS}", "models.llama.port: expected a whole number from 1"),
    (
        f'[models."a/b"]\nport = 8001\naliases = ["x", "x"]\n{HOOKS}',
        "models.\"a/b\".aliases[1]: alias 'x' is listed twice",
    ),
    (f'[policy]\nname = "lifo"\n[models.m]\nport = 8001\n{HOOKS}', "policy.name: unknown policy"),
    (
        f'[policy]\nname = "no_such_module_for_aiollmux:Policy"\n[models.m]\nport = 8001\n{HOOKS}',
        "policy.name: cannot import no_such_module_for_aiollmux",
    ),
    ("port = 3000\nhost = \n", "invalid TOML: "),
    ("", "models: at least one model is required"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_check_rejects_bad_configs(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "bad.toml", text)
    result = invoke("check", "-c", str(config))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {config}: {message}"), result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_check_invalid_toml_names_the_line(tmp_path: Path) -> None:
    config = write(tmp_path / "bad.toml", "port = 3000\nhost = \n")
    result = invoke("check", "-c", str(config))
    assert result.exit_code == 2
    assert re.search(r"\(at line 2, column \d+\)$", result.stderr.strip()), result.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    result = invoke("check", "-c", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {tmp_path / 'nope.toml'}: file not found (create one with `aiollmux init`)\n"
    )


def test_check_warns_about_a_missing_hook_script(tmp_path: Path) -> None:
    text = '[models.m]\nport = 8001\nwake = "./scripts/wake.sh"\nsleep = "true"\nalive = "true"\n'
    config = write(tmp_path / "llmux.toml", text)
    result = invoke("check", "-c", str(config))
    assert result.exit_code == 0
    assert result.stdout.startswith(f"{config}: OK\n")
    assert result.stderr == (
        f"warning: {config}: models.m.wake: ./scripts/wake.sh does not exist"
        f" (looked for {tmp_path / 'scripts' / 'wake.sh'})\n"
    )


def test_check_warns_about_a_request_timeout_shorter_than_the_policy_wait(
    tmp_path: Path,
) -> None:
    model = '[models.m]\nport = 8001\nwake = "true"\nsleep = "true"\nalive = "true"\n'
    policy = '[policy]\nname = "cost-aware"\nrequest_timeout_secs = 60\nmax_wait_secs = 120\n'
    config = write(tmp_path / "llmux.toml", policy + model)
    result = invoke("check", "-c", str(config))
    assert result.exit_code == 0
    assert result.stderr == (
        f"warning: {config}: policy.request_timeout_secs: 60 s is shorter than max_wait_secs"
        " (120 s): requests may time out (504) while cost-aware keeps another model on the"
        " GPU\n"
    )
    fifo = write(tmp_path / "fifo.toml", policy.replace("cost-aware", "fifo") + model)
    assert invoke("check", "-c", str(fifo)).stderr == ""  # fifo does not wait


# -- init and the default config ------------------------------------------------------------


def test_init_writes_a_config_that_check_accepts(tmp_path: Path) -> None:
    target = tmp_path / "new.toml"
    result = invoke("init", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {target}; check it with `aiollmux check -c {target}`\n"
    text = target.read_text()
    assert text.startswith("# aiollmux configuration written by `aiollmux init`")
    assert tomllib.loads(text) == starter_document()
    checked = invoke("check", "-c", str(target))
    assert checked.exit_code == 0, checked.output
    assert "model demo-large: port 8002" in checked.stdout
    assert "model demo-small: port 8001" in checked.stdout


def test_init_defaults_to_llmux_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("init")
    assert result.exit_code == 0, result.output
    assert tomllib.loads((tmp_path / "llmux.toml").read_text()) == starter_document()


def test_init_never_overwrites(tmp_path: Path) -> None:
    target = write(tmp_path / "llmux.toml", "# my precious config\n")
    result = invoke("init", str(target))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"error: {target} already exists; not overwriting it\n"
    assert target.read_text() == "# my precious config\n"


def test_init_creates_missing_directories(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir.toml"
    result = invoke("init", str(target))
    assert result.exit_code == 0, result.output
    assert tomllib.loads(target.read_text()) == starter_document()


def test_init_under_a_file_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "llmux.toml"
    result = invoke("init", str(target))
    assert result.exit_code == 1
    assert result.stderr == f"error: cannot create {target.parent}: File exists\n"


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"aiollmux, version {__version__}\n"


def test_repository_default_config_is_the_starter() -> None:
    """llmux.toml is the starter with comments: they must not drift apart."""
    shipped = REPO / "llmux.toml"
    assert tomllib.loads(shipped.read_text()) == starter_document()
    from_file = load_config(shipped)
    from_starter = parse_config(tomli_w.dumps(starter_document()), str(shipped), REPO)
    assert dataclasses.replace(from_file, base_dir=REPO) == from_starter
    assert sorted(from_file.models) == ["demo-large", "demo-small"]


# -- run, in process (its failures return before serving) -------------------------------------


def test_run_rejects_an_invalid_config(tmp_path: Path) -> None:
    config = write(tmp_path / "bad.toml", f"[models.m]\nport = 99999\n{HOOKS}")
    with preserved_logging():
        result = invoke("run", "-c", str(config))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {config}: models.m.port: expected a whole number")
    assert "Traceback" not in result.output


def test_run_rejects_a_listen_port_that_is_a_models_port(tmp_path: Path) -> None:
    config = write(tmp_path / "llmux.toml", f"[models.m]\nport = 8001\n{HOOKS}")
    with preserved_logging():
        result = invoke("run", "-c", str(config), "-p", "8001")
    assert result.exit_code == 2
    assert result.stderr == f"error: {config}: --port: port 8001 is a model's port\n"


def test_run_reports_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write(tmp_path / "llmux.toml", f"[models.m]\nport = {free_port()}\n{HOOKS}")
        with preserved_logging():
            result = invoke("run", "-c", str(config), "--host", "127.0.0.1", "-p", str(port))
    assert result.exit_code == 1, result.output
    assert result.stderr.endswith(
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            OSError(98, "error while attempting to bind: address already in use"),
            "Address already in use",
        ),
        (socket.gaierror(-2, "Name or service not known"), "Name or service not known"),
        (OSError("no errno at all"), "no errno at all"),
    ],
)
def test_listen_errors_read_like_the_os(error: OSError, reason: str) -> None:
    assert _reason(error) == reason


# -- run, as a real subprocess ----------------------------------------------------------------


def pidfile(tmp_path: Path, port: int) -> Path:
    return tmp_path / "runtime" / f"aiollmux-demo-{os.getuid()}" / f"{port}.pid"


def demo_config(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """The starter config with free ports and no pretend loading time."""
    document: dict[str, Any] = starter_document()
    document["port"] = free_port()
    ports: dict[str, int] = {}
    for model_id, table in document["models"].items():
        table["port"] = ports[model_id] = free_port()
        table["wake"] = re.sub(r"--load-secs [\d.]+", "--load-secs 0", table["wake"])
    path = tmp_path / "llmux.toml"
    path.write_text(tomli_w.dumps(document))
    return path, ports


def stop_demo_backend(tmp_path: Path, port: int) -> subprocess.CompletedProcess[str]:
    command = ["aiollmux", "demo-backend", "--stop", "--port", str(port)]
    return subprocess.run(
        command, env=child_env(tmp_path / "runtime"), capture_output=True, text=True,
        timeout=CHILD_DEADLINE_SECS, check=False,
    )  # fmt: skip


async def chat(client: aiohttp.ClientSession, url: str, model: str, **extra: Any) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "ping"}], **extra}
    async with client.post(f"{url}/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        return await response.text()


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_run_serves_the_demo_config(tmp_path: Path, log_format: str) -> None:
    config, ports = demo_config(tmp_path)
    try:
        async with (
            daemon_process(
                config,
                options=("--log-format", log_format),
                env=child_env(tmp_path / "runtime"),
                cwd=tmp_path,
            ) as daemon,
            aiohttp.ClientSession() as client,
        ):
            async with client.get(f"{daemon.url}/health") as response:
                assert (response.status, await response.json()) == (200, {"status": "ok"})
            async with client.get(f"{daemon.url}/v1/models") as response:
                listed = [entry["id"] for entry in (await response.json())["data"]]
                assert listed == ["demo-large", "demo-small"]
            for model in ("demo-small", "demo-large"):
                answer = json.loads(await chat(client, daemon.url, model))
                assert answer["model"] == model
                content = answer["choices"][0]["message"]["content"]
                assert content.startswith(f"Hello from {model}!")
            stream = await chat(client, daemon.url, "demo-small", stream=True)
            events = [event for event in stream.split("\n\n") if event]
            assert all(event.startswith("data: ") for event in events), stream
            assert events[-1] == "data: [DONE]"
            chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
            assert {chunk["model"] for chunk in chunks} == {"demo-small"}
            text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks)
            assert text.startswith("Hello from demo-small!")
            # demo-large was put to sleep by the last switch; demo-small is awake.
            assert not pidfile(tmp_path, ports["demo-large"]).exists()
            awake_pid = int(pidfile(tmp_path, ports["demo-small"]).read_text())
            daemon.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(CHILD_DEADLINE_SECS):
                assert await daemon.process.wait() == 0
        output = daemon.lines()
        assert "Traceback" not in "\n".join(output)
        if log_format == "json":
            records = [json.loads(line) for line in output]
            assert all(isinstance(record, dict) for record in records)
            events_seen = [record.get("event") for record in records]
            assert "switch_started" in events_seen
            activated = [r["to"] for r in records if r.get("event") == "model_activated"]
            assert activated == ["demo-small", "demo-large", "demo-small"]
        else:
            assert sum("[model_activated]" in line for line in output) == 3
    finally:
        stopped = [stop_demo_backend(tmp_path, port) for port in ports.values()]
    assert [(s.returncode, s.stderr) for s in stopped] == [(0, ""), (0, "")]
    assert not any(pidfile(tmp_path, port).exists() for port in ports.values())
    assert process_gone(awake_pid)


def test_run_subprocess_rejects_an_invalid_config(tmp_path: Path) -> None:
    config = write(tmp_path / "llmux.toml", f'[models.llama]\nport = "8001"\n{HOOKS}')
    result = subprocess.run(
        [sys.executable, "-m", "aiollmux", "run", "-c", str(config), "-p", str(free_port())],
        env=child_env(tmp_path / "runtime"), capture_output=True, text=True,
        timeout=CHILD_DEADLINE_SECS, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {config}: models.llama.port: expected a whole number from 1 to 65535,"
        " got the string '8001'\n"
    )
