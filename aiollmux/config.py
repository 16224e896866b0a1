"""The configuration file: TOML text parsed into frozen dataclasses (DESIGN §2).

`parse_config` is pure and raises `ConfigError` naming the file and the key path;
`load_config` is the thin file-reading wrapper. Nothing else in aiollmux reads TOML.
"""

from __future__ import annotations

import os
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from aiollmux.errors import ConfigError

DEFAULT_PATH: Final = "llmux.toml"
DEFAULT_GROUP: Final = "default"
BUILTIN_POLICIES: Final = ("fifo",)

HookName = Literal["wake", "sleep", "alive"]
HOOK_NAMES: Final[tuple[HookName, ...]] = ("wake", "sleep", "alive")


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    name: str = "fifo"
    request_timeout_secs: float | None = 300.0
    drain_before_switch: bool = True
    min_active_secs: float = 0.0
    drain_timeout_secs: float = 0.0
    idle_sleep_secs: float = 0.0
    max_queued_requests: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    id: str
    port: int
    wake: str
    sleep: str
    alive: str
    wake_timeout_secs: float = 600.0
    sleep_timeout_secs: float = 120.0
    alive_timeout_secs: float = 10.0
    aliases: tuple[str, ...] = ()
    upstream_model: str | None = None
    group: str = DEFAULT_GROUP

    def hook(self, name: HookName) -> str:
        return {"wake": self.wake, "sleep": self.sleep, "alive": self.alive}[name]

    def timeout(self, name: HookName) -> float:
        return {
            "wake": self.wake_timeout_secs,
            "sleep": self.sleep_timeout_secs,
            "alive": self.alive_timeout_secs,
        }[name]


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupConfig:
    name: str
    exclusive: bool = False
    persistent: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    source: str = "<string>"
    base_dir: Path = field(default_factory=Path.cwd)
    host: str = "127.0.0.1"
    port: int = 3000
    max_request_body_mb: float = 64.0
    shutdown_timeout_secs: float = 30.0
    sleep_on_shutdown: bool = False
    alive_interval_secs: float = 30.0
    api_keys: tuple[str, ...] = ()
    admin_token: str | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    groups: Mapping[str, GroupConfig] = field(default_factory=dict)

    @property
    def max_request_body_bytes(self) -> int:
        return int(self.max_request_body_mb * 1024 * 1024)

    def resolve(self, name: str) -> ModelConfig | None:
        """The model a client's `model` string names: an id or an alias."""
        model = self.models.get(name)
        if model is not None:
            return model
        for candidate in self.models.values():
            if name in candidate.aliases:
                return candidate
        return None


class _Table:
    """Typed reads from one TOML table, remembering which keys were used."""

    def __init__(self, source: str, path: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.path = path
        self.data = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{_quote_key(name)}" if self.path else _quote_key(name)

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), message)

    def _get(self, name: str) -> Any:
        self.used.add(name)
        return self.data.get(name)

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(name)
        if value is None:
            if required or default is None:
                raise self.error(name, "is required (a string)")
            return default
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {_describe(value)}")
        if not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def optional_string(self, name: str) -> str | None:
        if self.data.get(name) is None:
            self.used.add(name)
            return None
        return self.string(name)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {_describe(value)}")
        return value

    def number(self, name: str, default: float, *, positive: bool = False) -> float:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected a number, got {_describe(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            raise self.error(name, "expected a finite number")
        if positive and value <= 0:
            raise self.error(name, f"expected a number greater than 0, got {value}")
        if value < 0:
            raise self.error(name, f"expected a number of 0 or more, got {value}")
        return float(value)

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected a whole number, got {_describe(value)}")
        if not low <= value <= high:
            raise self.error(name, f"expected a number from {low} to {high}, got {value}")
        return value

    def string_list(self, name: str) -> tuple[str, ...]:
        value = self._get(name)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(name, f"expected a list of strings, got {_describe(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise ConfigError(
                    self.source,
                    f"{self.key(name)}[{index}]",
                    f"expected a non-empty string, got {_describe(item)}",
                )
        return tuple(value)

    def table(self, name: str) -> _Table:
        value = self._get(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table, got {_describe(value)}")
        return _Table(self.source, self.key(name), value)

    def reject_unknown(self) -> None:
        for name in self.data:
            if name not in self.used:
                raise self.error(name, "unknown key")


def _quote_key(name: str) -> str:
    if name and all(ch.isalnum() or ch in "_-" for ch in name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def parse_config(text: str, source: str = "<string>", base_dir: Path | None = None) -> Config:
    """Parse and validate a whole configuration; raise `ConfigError` on the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    root = _Table(source, "", data)
    host = root.string("host", "127.0.0.1")
    port = root.integer("port", 3000, low=1, high=65535)
    config_kwargs: dict[str, Any] = {
        "host": host,
        "port": port,
        "max_request_body_mb": root.number("max_request_body_mb", 64.0, positive=True),
        "shutdown_timeout_secs": root.number("shutdown_timeout_secs", 30.0),
        "sleep_on_shutdown": root.boolean("sleep_on_shutdown", False),
        "alive_interval_secs": root.number("alive_interval_secs", 30.0),
        "api_keys": root.string_list("api_keys"),
        "admin_token": root.optional_string("admin_token"),
        "policy": _parse_policy(root.table("policy")),
    }
    groups = _parse_groups(root.table("groups"))
    models = _parse_models(root.table("models"), groups, own_port=port)
    root.reject_unknown()
    return Config(
        source=source,
        base_dir=base_dir if base_dir is not None else Path.cwd(),
        models=models,
        groups=groups,
        **config_kwargs,
    )


def _parse_policy(table: _Table) -> PolicyConfig:
    name = table.string("name", "fifo")
    if name not in BUILTIN_POLICIES and not _looks_like_import_path(name):
        known = ", ".join(BUILTIN_POLICIES)
        raise table.error(
            "name", f"unknown policy {name!r}: expected one of {known} or 'package.module:Class'"
        )
    timeout: float | None = 300.0
    if "request_timeout_secs" in table.data:
        timeout = table.number("request_timeout_secs", 300.0, positive=True)
    policy = PolicyConfig(
        name=name,
        request_timeout_secs=timeout,
        drain_before_switch=table.boolean("drain_before_switch", True),
        min_active_secs=table.number("min_active_secs", 0.0),
        drain_timeout_secs=table.number("drain_timeout_secs", 0.0),
        idle_sleep_secs=table.number("idle_sleep_secs", 0.0),
        max_queued_requests=table.integer("max_queued_requests", 0, low=0, high=1_000_000),
    )
    table.reject_unknown()
    return policy


def _looks_like_import_path(name: str) -> bool:
    module, sep, attribute = name.partition(":")
    parts = module.split(".")
    return bool(sep) and attribute.isidentifier() and all(p.isidentifier() for p in parts)


def _parse_groups(table: _Table) -> dict[str, GroupConfig]:
    groups = {DEFAULT_GROUP: GroupConfig(name=DEFAULT_GROUP)}
    for name in table.data:
        entry = table.table(name)
        groups[name] = GroupConfig(
            name=name,
            exclusive=entry.boolean("exclusive", False),
            persistent=entry.boolean("persistent", False),
        )
        for flag in ("exclusive", "persistent"):
            if entry.data.get(flag) is True:
                # Accepting the flag without honouring it would be a silent lie.
                raise entry.error(flag, "is not supported yet by this version of aiollmux")
        entry.reject_unknown()
    return groups


def _parse_models(
    table: _Table, groups: Mapping[str, GroupConfig], *, own_port: int
) -> dict[str, ModelConfig]:
    if not table.data:
        raise ConfigError(table.source, "models", "at least one model is required ([models.ID])")
    models: dict[str, ModelConfig] = {}
    ports: dict[int, str] = {}
    names: dict[str, str] = {}  # every id and alias -> the model that owns it
    for model_id in table.data:
        entry = table.table(model_id)
        if not model_id.strip():
            raise ConfigError(table.source, entry.path, "a model id must not be empty")
        model = _parse_model(model_id, entry, groups)
        if model.port in ports:
            raise entry.error(
                "port", f"port {model.port} is already used by model {ports[model.port]!r}"
            )
        if model.port == own_port:
            raise entry.error("port", f"port {model.port} is aiollmux's own listen port")
        ports[model.port] = model_id
        if model_id in names:
            raise ConfigError(
                table.source, entry.path, f"model id collides with an alias of {names[model_id]!r}"
            )
        names[model_id] = model_id
        models[model_id] = model
    for model in models.values():
        key = f"{table.key(model.id)}.aliases"
        for alias in model.aliases:
            owner = names.get(alias)
            if owner is not None:
                what = "the model id" if owner == alias else f"an alias of model {owner!r}"
                raise ConfigError(table.source, key, f"alias {alias!r} collides with {what}")
            names[alias] = model.id
    return models


def _parse_model(model_id: str, entry: _Table, groups: Mapping[str, GroupConfig]) -> ModelConfig:
    group = entry.string("group", DEFAULT_GROUP)
    if group not in groups:
        raise entry.error("group", f"unknown group {group!r}: declare it as [groups.{group}]")
    model = ModelConfig(
        id=model_id,
        port=entry.integer("port", 0, low=1, high=65535)
        if "port" in entry.data
        else _missing(entry, "port", "a port number"),
        wake=entry.string("wake", required=True),
        sleep=entry.string("sleep", required=True),
        alive=entry.string("alive", required=True),
        wake_timeout_secs=entry.number("wake_timeout_secs", 600.0, positive=True),
        sleep_timeout_secs=entry.number("sleep_timeout_secs", 120.0, positive=True),
        alive_timeout_secs=entry.number("alive_timeout_secs", 10.0, positive=True),
        aliases=entry.string_list("aliases"),
        upstream_model=entry.optional_string("upstream_model"),
        group=group,
    )
    if len(set(model.aliases)) != len(model.aliases):
        raise entry.error("aliases", "lists an alias twice")
    entry.reject_unknown()
    return model


def _missing(entry: _Table, name: str, what: str) -> int:
    raise entry.error(name, f"is required ({what})")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and parse a configuration file."""
    file = Path(path)
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found (create one with `aiollmux init`)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"not valid UTF-8: {exc.reason}") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror}") from None
    return parse_config(text, source, base_dir=file.resolve().parent)


def hook_warnings(config: Config) -> list[str]:
    """Hooks whose first word names a file that does not exist (a warning, not an error)."""
    warnings: list[str] = []
    for model in config.models.values():
        for hook in HOOK_NAMES:
            command = model.hook(hook)
            try:
                words = shlex.split(command)
            except ValueError:
                continue
            if not words or "/" not in words[0]:
                continue
            program = config.base_dir / words[0]
            if not program.exists():
                key = f"models.{_quote_key(model.id)}.{hook}"
                warnings.append(f"{config.source}: {key}: {words[0]} does not exist")
    return warnings
