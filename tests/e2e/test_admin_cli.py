"""`aiollmux status/switch/sleep` as real subprocesses against a real daemon, and migrate."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from aiollmux.cli import main
from aiollmux.config import load_config
from tests.support import Daemon, Lab, running_daemon, start_cli


async def _cli(*args: str, token: str | None = None) -> tuple[int, str, str]:
    process = await start_cli(*args, token=token)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _url(daemon: Daemon) -> tuple[str, str]:
    return "--url", daemon.url


async def test_status_switch_and_sleep(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    async with running_daemon(lab.config(hook_delay=0.6)) as daemon:
        code, out, _ = await _cli("status", *_url(daemon))
        assert code == 0
        assert "group default: idle, active model: -" in out
        assert "alpha" in out
        assert "beta" in out
        code, out, err = await _cli("switch", "beta", *_url(daemon))
        assert code == 0, err
        assert out.strip() == "beta is active"
        assert "beta waking" in err  # progress while the 0.6 s wake hook ran
        code, out, _ = await _cli("status", "--json", *_url(daemon))
        status = json.loads(out)
        assert status["active_model"] == "beta"
        assert status["switch_costs"][0]["to"] == "beta"
        code, out, _ = await _cli("status", *_url(daemon))
        assert "active model: beta" in out
        code, out, err = await _cli("sleep", *_url(daemon))
        assert code == 0, err
        assert daemon.mux.switchers["default"].state() == "idle"
        assert lab.journal.lines()[-2:] == ["start sleep beta", "end sleep beta"]


async def test_errors_are_one_line_and_non_zero(lab: Lab) -> None:
    await lab.add_backends("alpha")
    hooks = {"alpha": {"wake": "echo 'no GPU left' >&2; exit 1"}}
    async with running_daemon(lab.config(hooks=hooks)) as daemon:
        code, _, err = await _cli("switch", "nope", *_url(daemon))
        assert code == 1
        assert "HTTP 404" in err
        code, _, err = await _cli("switch", "alpha", *_url(daemon))
        assert code == 1
        assert "HTTP 503" in err
        assert "no GPU left" in err
        assert "Traceback" not in err
    code, _, err = await _cli("status", "--url", "http://127.0.0.1:9")
    assert code == 1
    assert "cannot reach aiollmux" in err


async def test_admin_token_is_sent(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config(top='admin_token = "s3cret"')) as daemon:
        code, _, err = await _cli("status", *_url(daemon))
        assert code == 1
        assert "HTTP 401" in err
        code, out, _ = await _cli("status", *_url(daemon), token="s3cret")
        assert code == 0
        assert "alpha" in out


LLMUX_YAML = """\
models:
  llama:
    port: 8001
    wake: ./scripts/wake-llama.sh
    sleep: ./scripts/sleep-llama.sh
    alive: curl -sf http://localhost:8001/health

  mistral:
    port: 8002
    wake: |
      docker start my-model-container
      curl -sf http://localhost:$LLMUX_DEST_PORT/health
    sleep: ./scripts/sleep-mistral.sh
    alive: curl -sf http://localhost:8002/health

policy:
  request_timeout_secs: null
  drain_before_switch: true
  min_active_secs: 5

metrics_port: 9090
port: 3000
"""


def test_migrate_llmux_readme_example(tmp_path: Path) -> None:
    source = tmp_path / "config.yaml"
    source.write_text(LLMUX_YAML)
    target = tmp_path / "llmux.toml"
    result = CliRunner().invoke(main, ["migrate", str(source), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "metrics_port: not an aiollmux setting" in result.stderr
    assert "LLMUX_DEST_PORT" in result.stderr
    config = load_config(target)
    assert sorted(config.models) == ["llama", "mistral"]
    assert config.models["mistral"].wake.startswith("docker start my-model-container\n")
    assert config.policy.min_active_secs == 5
    assert config.policy.request_timeout_secs is None
    checked = CliRunner().invoke(main, ["check", "-c", str(target)])
    assert checked.exit_code == 0, checked.output
    again = CliRunner().invoke(main, ["migrate", str(source), "-o", str(target)])
    assert again.exit_code == 1
    assert "already exists" in again.stderr


def test_migrate_json_to_stdout(tmp_path: Path) -> None:
    source = tmp_path / "config.json"
    source.write_text(
        json.dumps(
            {
                "models": {
                    "a": {
                        "port": 8001,
                        "wake": "true",
                        "sleep": "true",
                        "alive": "true",
                        "extra": 1,
                    }
                }
            }
        )
    )
    result = CliRunner().invoke(main, ["migrate", str(source)])
    assert result.exit_code == 0
    assert '[models.a]\nport = 8001\nwake = "true"' in result.stdout
    assert "models.a.extra: not supported" in result.stderr


def test_migrate_bad_input_exits_2(tmp_path: Path) -> None:
    source = tmp_path / "config.json"
    source.write_text("[1, 2]")
    result = CliRunner().invoke(main, ["migrate", str(source)])
    assert result.exit_code == 2
    assert "expected a mapping" in result.stderr
    source.write_text("{bad")
    result = CliRunner().invoke(main, ["migrate", str(source)])
    assert result.exit_code == 2
    assert "invalid JSON" in result.stderr
