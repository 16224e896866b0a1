"""Every configuration default is written once, as its dataclass field's default, and read
from there by the parser (`config.defaults`); docs/configuration.md, `aiollmux init` and
`aiollmux check --settings` are checked against the same source in their own tests."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from aiollmux import config
from aiollmux.config import Config, GroupConfig, ModelConfig, PolicyConfig, defaults

# A valid value other than the default, for every key that has a default (tables aside).
ALTERED: dict[type, dict[str, Any]] = {
    Config: {
        "host": "localhost",
        "port": 3001,
        "max_request_body_mb": 65.5,
        "shutdown_timeout_secs": 31.5,
        "sleep_on_shutdown": True,
        "alive_interval_secs": 31.5,
        "api_keys": ("sk-test",),
        "admin_token": "secret",
        "proxy_paths": ("/v2/",),
        "client_header_timeout_secs": 61.5,
        "client_body_timeout_secs": 61.5,
        "send_timeout_secs": 61.5,
        "keepalive_timeout_secs": 76.5,
        "max_connections": 2049,
        "backlog": 2049,
    },
    PolicyConfig: {
        "name": "cost-aware",
        "request_timeout_secs": 7.5,
        "drain_before_switch": False,
        "min_active_secs": 1.5,
        "drain_timeout_secs": 1.5,
        "idle_sleep_secs": 1.5,
        "max_queued_requests": 1,
        "max_wait_secs": 121.5,
        "staleness_factor": 5.5,
        "coalesce_ms": 201.5,
        "linger_factor": 0.75,
        "initial_switch_cost_secs": 10.5,
    },
    ModelConfig: {
        "wake_timeout_secs": 601.5,
        "sleep_timeout_secs": 121.5,
        "alive_timeout_secs": 10.5,
        "aliases": ("an-alias",),
        "upstream_model": "upstream",
        "group": "gpu0",  # declared below, with a budget the model fits in
        "memory_gb": 1.5,
        "preset": "llamacpp",
        "proxy_paths": ("/api/chat",),
    },
    GroupConfig: {
        "exclusive": True,
        "persistent": True,
        "memory_gb": 24.0,
        "free_memory": "echo 24",
        "free_memory_timeout_secs": 60.5,
    },
}
TABLES = {"policy", "groups", "models", "env"}  # keys that are tables of their own
MINIMAL = '[groups.gpu0]\n[models.m]\nport = 8001\nwake = "true"\nsleep = "true"\nalive = "true"\n'


def parsed_tables(parsed: Config) -> dict[type, object]:
    """Where each table's values end up: the model m and the group gpu0 of MINIMAL."""
    return {
        Config: parsed,
        PolicyConfig: parsed.policy,
        ModelConfig: parsed.models["m"],
        GroupConfig: parsed.groups["gpu0"],
    }


@pytest.mark.parametrize("table", list(config.TABLE_KEYS), ids=lambda cls: cls.__name__)
def test_every_default_has_an_altered_value_here(table: type) -> None:
    assert set(defaults(table)) - TABLES == set(ALTERED[table])


def test_the_parser_reads_every_default_from_the_dataclass_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Change every field's default (the generated __init__ keeps the old ones): the parser
    # must return the new ones, so no default is written a second time in a parse call.
    for table, values in ALTERED.items():
        found = {item.name: item for item in dataclasses.fields(table)}
        for name, value in values.items():
            monkeypatch.setattr(found[name], "default", value)
    tables = parsed_tables(config.parse_config(MINIMAL, "defaults.toml"))
    for table, values in ALTERED.items():
        for name, value in values.items():
            assert getattr(tables[table], name) == value, f"{table.__name__}.{name}"


def test_a_key_left_out_takes_the_default() -> None:
    tables = parsed_tables(config.parse_config(MINIMAL, "defaults.toml"))
    for table, read in tables.items():
        for name, default in defaults(table).items():
            if name not in TABLES:
                assert getattr(read, name) == default, f"{table.__name__}.{name}"


def test_keys_without_a_default_are_required() -> None:
    assert set(config.MODEL_KEYS) - set(defaults(ModelConfig)) == {"port", "wake", "sleep", "alive"}
    for table in (Config, PolicyConfig, GroupConfig):
        assert set(defaults(table)) == set(config.TABLE_KEYS[table])


# -- aiollmux init ---------------------------------------------------------------------------

# What the starter file sets on purpose to something other than the default.
STARTER_CHOICES = {"policy.request_timeout_secs": 300, "models.*.wake_timeout_secs": 60}


def written_settings(document: dict[str, Any]) -> dict[str, tuple[type, object]]:
    """`table.key` (models as `models.*`) -> (its table's class, the value written)."""
    found: dict[str, tuple[type, object]] = {}
    for key, value in document.items():
        if key not in TABLES:
            found[key] = (Config, value)
    for key, value in document["policy"].items():
        found[f"policy.{key}"] = (PolicyConfig, value)
    for model in document["models"].values():
        for key, value in model.items():
            if key not in TABLES:
                found[f"models.*.{key}"] = (ModelConfig, value)
    return found


@pytest.mark.parametrize("preset", [None, "llamacpp"])
def test_the_starter_writes_defaults_as_they_are(preset: str | None) -> None:
    from aiollmux import presets
    from aiollmux.tools.starter import preset_document, starter_document

    found = presets.get(preset) if preset else None
    document = starter_document() if found is None else preset_document(found)
    settings = written_settings(document)
    listed = 0
    for path, (table, value) in settings.items():
        key = path.rpartition(".")[2]
        real = defaults(table)
        if path in STARTER_CHOICES:
            assert value == STARTER_CHOICES[path] != real[key], path
        elif real.get(key) is not None:  # a key that is unset by default is a choice
            written = tuple(value) if isinstance(value, list) else value
            assert written == real[key], f"the starter writes {path} = {value!r}, not its default"
            listed += 1
    assert listed >= 3  # host, port, policy.name at least


def test_the_starter_reads_the_defaults_it_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiollmux.tools.starter import starter_document

    found = {item.name: item for item in dataclasses.fields(Config)}
    monkeypatch.setattr(found["port"], "default", 3100)
    monkeypatch.setattr(found["max_request_body_mb"], "default", 65.5)
    document = starter_document()
    assert (document["port"], document["max_request_body_mb"]) == (3100, 65.5)
