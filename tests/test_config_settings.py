"""`aiollmux check --settings`: every setting in force, one key path a line, those left at
their defaults marked from the one source (`config.defaults`), secrets never shown."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from aiollmux import config
from aiollmux.cli import main
from aiollmux.config import PolicyConfig, parse_config
from aiollmux.config_settings import TABLES, settings_lines

TEXT = """\
port = 4000
admin_token = "hunter2"
api_keys = ["sk-one", "sk-two"]
max_connections = 1000000
[policy]
name = "cost-aware"
request_timeout_secs = 300
[groups.gpu0]
memory_gb = 24
[models."Qwen/Qwen2.5-7B"]
port = 8001
wake = "./wake.sh"
sleep = "true"
alive = "true"
group = "gpu0"
memory_gb = 8.5
aliases = ["qwen"]
[models."Qwen/Qwen2.5-7B".env]
HF_TOKEN = "hf-secret"
"""


def check_settings(tmp_path: Path) -> list[str]:
    path = tmp_path / "llmux.toml"
    path.write_text(TEXT)
    result = CliRunner().invoke(main, ["check", "--settings", "-c", str(path)])
    assert result.exit_code == 0, result.output
    summary, _, settings = result.stdout.partition("settings:\n")
    assert summary.startswith(f"{path}: OK\n  listen: http://127.0.0.1:4000\n")
    return [line.removeprefix("  ") for line in settings.splitlines()]


def test_check_prints_every_setting_marking_the_defaults(tmp_path: Path) -> None:
    lines = check_settings(tmp_path)
    for expected in [
        'host = "127.0.0.1"  # default',
        "port = 4000",
        "max_request_body_mb = 64  # default",
        "max_connections = 1000000",
        'proxy_paths = ["/v1/"]  # default',
        'policy.name = "cost-aware"',
        "policy.request_timeout_secs = 300",
        "policy.drain_before_switch = true  # default",
        "policy.linger_factor = 0.5  # default",
        "groups.default.memory_gb = (not set)  # default",
        "groups.gpu0.memory_gb = 24",
        'models."Qwen/Qwen2.5-7B".wake = "./wake.sh"',
        'models."Qwen/Qwen2.5-7B".wake_timeout_secs = 600  # default',
        'models."Qwen/Qwen2.5-7B".aliases = ["qwen"]',
        'models."Qwen/Qwen2.5-7B".memory_gb = 8.5',
        'models."Qwen/Qwen2.5-7B".upstream_model = (not set)  # default',
    ]:
        assert expected in lines
    # One line a key, for every key of every table.
    keys = [line.split(" = ", 1)[0] for line in lines]
    assert len(keys) == len(set(keys))
    for table, prefix in [
        (config.Config, ""),
        (PolicyConfig, "policy."),
        (config.GroupConfig, "groups.gpu0."),
        (config.ModelConfig, 'models."Qwen/Qwen2.5-7B".'),
    ]:
        for key in set(config.TABLE_KEYS[table]) - TABLES:
            assert prefix + key in keys


def test_check_never_shows_a_secret(tmp_path: Path) -> None:
    lines = check_settings(tmp_path)
    assert "admin_token = (set, not shown)" in lines
    assert "api_keys = (2 keys, not shown)" in lines
    assert 'models."Qwen/Qwen2.5-7B".env.HF_TOKEN = (set, not shown)' in lines
    text = "\n".join(lines)
    for secret in ("hunter2", "sk-one", "sk-two", "hf-secret"):
        assert secret not in text


def test_the_default_mark_comes_from_the_dataclass_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = parse_config(TEXT, "llmux.toml")
    assert "policy.max_wait_secs = 120  # default" in settings_lines(parsed)
    found = {item.name: item for item in dataclasses.fields(PolicyConfig)}
    monkeypatch.setattr(found["max_wait_secs"], "default", 121.5)
    assert "policy.max_wait_secs = 120" in settings_lines(parsed)  # no longer the default
