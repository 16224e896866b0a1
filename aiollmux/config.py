"""The configuration file: TOML text parsed into frozen dataclasses (docs/design.md §2).

`parse_config` is pure and raises `ConfigError` naming the file and the key path;
`load_config` is the thin file-reading wrapper. Nothing else in aiollmux reads TOML.
"""

from __future__ import annotations

import datetime
import difflib
import logging
import math
import os
import re
import shlex
import stat
import string
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

from aiollmux import presets
from aiollmux.errors import ConfigError

logger = logging.getLogger(__name__)

# TOML integers are 64-bit; tomllib reads larger ones, which float() and str() choke on.
_INT64: Final = range(-(2**63), 2**63)

DEFAULT_PATH: Final = "llmux.toml"
DEFAULT_GROUP: Final = "default"
BUILTIN_POLICIES: Final = ("fifo", "cost-aware")

HookName = Literal["wake", "sleep", "alive"]
HOOK_NAMES: Final[tuple[HookName, ...]] = ("wake", "sleep", "alive")

# The keys each table may hold; anything else is reported before its value is read,
# so a typo ("prot", "[model.x]") is named as such rather than as a missing key.
ROOT_KEYS: Final = (
    "host", "port", "max_request_body_mb", "shutdown_timeout_secs", "sleep_on_shutdown",
    "alive_interval_secs", "api_keys", "admin_token", "policy", "groups", "models",
    # Exposure and limits (docs/design.md §5)
    "proxy_paths", "client_header_timeout_secs", "client_body_timeout_secs",
    "send_timeout_secs", "keepalive_timeout_secs", "max_connections", "backlog",
)  # fmt: skip
POLICY_KEYS: Final = (
    "name", "request_timeout_secs", "drain_before_switch", "min_active_secs",
    "drain_timeout_secs", "idle_sleep_secs", "max_queued_requests",
    # cost-aware's knobs; accepted (and ignored) with any other policy, so that changing
    # `name` alone switches policies, in a reload or in `aiollmux simulate`.
    "max_wait_secs", "staleness_factor", "coalesce_ms", "linger_factor",
    "initial_switch_cost_secs",
)  # fmt: skip
MAX_COALESCE_MS: Final = 10_000.0
GROUP_KEYS: Final = (
    "exclusive", "persistent", "memory_gb", "free_memory", "free_memory_timeout_secs",
)  # fmt: skip
MODEL_KEYS: Final = (
    "port", "wake", "sleep", "alive", "wake_timeout_secs", "sleep_timeout_secs",
    "alive_timeout_secs", "aliases", "upstream_model", "group", "memory_gb",
    "preset", "env",  # docs/design.md §14
    "proxy_paths",  # docs/design.md §5
)  # fmt: skip
# GiB: far above any GPU box, and small enough that sums of sizes stay exact enough.
MAX_MEMORY_GB: Final = 1024.0 * 1024
# [models.ID.env] may not set these: the daemon sets LLMUX_* for every hook (docs/design.md §3).
RESERVED_ENV_PREFIX: Final = "LLMUX_"

DEFAULT_PROXY_PATHS: Final = ("/v1/",)
# Connection limits (docs/design.md §5): the kernel's own ceiling on a listen backlog is somaxconn.
MAX_CONNECTIONS_LIMIT: Final = 1_000_000
MAX_BACKLOG: Final = 65535

# 1 TiB: far above any real request, and small enough that the byte count stays finite.
MAX_REQUEST_BODY_MB: Final = 1024 * 1024
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY_CHARS: Final = frozenset(string.ascii_letters + string.digits + "_-")


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    name: str = "fifo"
    request_timeout_secs: float | None = None  # None: wait as long as the wake takes
    drain_before_switch: bool = True
    min_active_secs: float = 0.0
    drain_timeout_secs: float = 0.0
    idle_sleep_secs: float = 0.0
    max_queued_requests: int = 0
    # cost-aware (docs/policies.md): how long a request may wait while another model
    # keeps the GPU: `staleness_factor` x the switch's measured cost, at most `max_wait_secs`.
    max_wait_secs: float = 120.0
    staleness_factor: float = 5.0
    coalesce_ms: float = 200.0  # let a burst gather before leaving idle or a dry model
    linger_factor: float = 0.5  # a model that just ran dry keeps the GPU this x switch cost
    initial_switch_cost_secs: float = 10.0  # the cost assumed until a switch is measured


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
    memory_gb: float | None = None  # GPU memory it occupies awake (docs/design.md §8)
    preset: str | None = None  # the hooks not given explicitly are this preset's (§14)
    env: Mapping[str, str] = field(default_factory=dict)  # added to its hooks' environment
    # Request paths proxied to this model besides the top-level `proxy_paths` (docs/design.md §5).
    # The place a preset (§14) puts its engine's native inference paths.
    proxy_paths: tuple[str, ...] = ()

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
    memory_gb: float | None = None  # a memory budget: members awake together up to it
    free_memory: str | None = None  # a command printing the GPU's free memory in GiB
    free_memory_timeout_secs: float = 60.0


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
    proxy_paths: tuple[str, ...] = DEFAULT_PROXY_PATHS
    client_header_timeout_secs: float = 60.0
    client_body_timeout_secs: float = 60.0
    send_timeout_secs: float = 60.0
    keepalive_timeout_secs: float = 75.0
    max_connections: int = 2048
    backlog: int = 2048
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


# The dataclass of each table and the keys it may hold: a key's default is its field's.
TABLE_KEYS: Final[Mapping[type, tuple[str, ...]]] = {
    Config: ROOT_KEYS,
    PolicyConfig: POLICY_KEYS,
    ModelConfig: MODEL_KEYS,
    GroupConfig: GROUP_KEYS,
}


def defaults(table: type) -> dict[str, Any]:
    """key -> default, for every key of `table` (a class of `TABLE_KEYS`) that has one.

    The dataclass field defaults above are the one place a default is written: the parser,
    `aiollmux init`'s starter file, `aiollmux check --settings` and the docs test read them
    here. A key missing from the result is required."""
    found: dict[str, Any] = {}
    for item in fields(table):
        if item.name not in TABLE_KEYS[table]:
            continue
        if item.default is not MISSING:
            found[item.name] = item.default
        elif item.default_factory is not MISSING:
            found[item.name] = item.default_factory()
    return found


class _Table:
    """Typed reads from one TOML table; every error names the full key path.

    `of` is the dataclass the table is parsed into: a key left out takes its field's
    default (no default: the key is required)."""

    def __init__(
        self, source: str, path: str, data: Mapping[str, Any], of: type | None = None
    ) -> None:
        self.source = source
        self.path = path
        self.data = data
        self.defaults = {} if of is None else defaults(of)

    def key(self, name: str) -> str:
        return f"{self.path}.{_quote_key(name)}" if self.path else _quote_key(name)

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), message)

    def only(self, allowed: Collection[str]) -> None:
        for name in self.data:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else f"expected one of {', '.join(allowed)}"
                )
                raise self.error(name, f"unknown key; {hint}")

    def string(self, name: str, *, what: str = "a string", default: str | None = None) -> str:
        """A non-blank string; without a `default` (here or on the field) it is required."""
        value = self.data.get(name)
        if value is None:
            default = self.defaults.get(name) if default is None else default
            if default is None:
                raise self.error(name, f"is required: expected {what}")
            return default
        if not isinstance(value, str):
            raise self.error(name, f"expected {what}, got {_describe(value)}")
        if not value.strip():
            raise self.error(name, f"must not be empty: expected {what}")
        if "\0" in value:  # no command, path or environment variable can hold one
            raise self.error(name, "must not contain a NUL character")
        return value

    def optional_string(self, name: str) -> str | None:
        """A string, or its field's default (None: not set) when left out."""
        if name not in self.data:
            default: str | None = self.defaults.get(name)
            return default
        return self.string(name)

    def boolean(self, name: str) -> bool:
        value = self.data.get(name)
        if value is None:
            default: bool = self.defaults[name]
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {_describe(value)}")
        return value

    def number(self, name: str, *, positive: bool = False, maximum: float | None = None) -> float:
        """A finite number of seconds (or MB): 0 or more, or more than 0 if `positive`."""
        value = self.data.get(name)
        if value is None:
            return float(self.defaults[name])
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected a number, got {_describe(value)}")
        if isinstance(value, int) and value not in _INT64:
            raise self.error(name, "expected a number, got an integer beyond 64 bits")
        if not math.isfinite(value):
            raise self.error(name, f"expected a finite number, got {value}")
        if positive and value <= 0:
            raise self.error(name, f"expected a number greater than 0, got {value}")
        if value < 0:
            raise self.error(name, f"expected a number of 0 or more, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"expected a number of at most {maximum}, got {value}")
        return float(value)

    def optional_number(self, name: str, *, positive: bool = False) -> float | None:
        """A number, or its field's default (None: not set) when left out."""
        if self.data.get(name) is None:
            default: float | None = self.defaults.get(name)
            return default
        return self.number(name, positive=positive)

    def integer(self, name: str, *, low: int, high: int) -> int:
        """A whole number in [low, high]; required if its field has no default."""
        expected = f"a whole number from {low} to {high}"
        value = self.data.get(name)
        if value is None:
            default: int | None = self.defaults.get(name)
            if default is None:
                raise self.error(name, f"is required: expected {expected}")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected {expected}, got {_describe(value)}")
        if value not in _INT64:
            raise self.error(name, f"expected {expected}, got an integer beyond 64 bits")
        if not low <= value <= high:
            raise self.error(name, f"expected {expected}, got {value}")
        return value

    def string_list(self, name: str) -> tuple[str, ...]:
        value = self.data.get(name)
        if value is None:
            default: tuple[str, ...] = self.defaults[name]
            return default
        if not isinstance(value, list):
            raise self.error(name, f"expected a list of strings, got {_describe(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.item_error(
                    name, index, f"expected a non-empty string, got {_describe(item)}"
                )
            if "\0" in item:
                raise self.item_error(name, index, "must not contain a NUL character")
        return tuple(value)

    def item_error(self, name: str, index: int, message: str) -> ConfigError:
        return ConfigError(self.source, f"{self.key(name)}[{index}]", message)

    def table(self, name: str, of: type | None = None) -> _Table:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table, got {_describe(value)}")
        return _Table(self.source, self.key(name), value, of)


def key_path(*names: str) -> str:
    """A key path as errors and `aiollmux check` write it: `models."Qwen/Qwen2.5-7B".port`."""
    return ".".join(_quote_key(name) for name in names)


def _quote_key(name: str) -> str:
    """A key as it would be written in TOML: bare if it can be, else a quoted string."""
    if name and all(ch in _BARE_KEY_CHARS for ch in name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int):
        if value not in _INT64:
            return "an integer beyond 64 bits"
        return f"the whole number {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, datetime.date | datetime.time):
        return f"the date/time {value.isoformat()}"
    return f"a {type(value).__name__}"  # pragma: no cover - TOML has no other types


def parse_config(text: str, source: str = "<string>", base_dir: Path | None = None) -> Config:
    """Parse and validate a whole configuration; raise `ConfigError` on the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nesting level
        raise ConfigError(source, "", "invalid TOML: nested too deeply") from None
    except ValueError as exc:  # e.g. Python's limit on the digits of an int
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    root = _Table(source, "", data, Config)
    root.only(ROOT_KEYS)
    port = root.integer("port", low=1, high=65535)
    groups = _parse_groups(root.table("groups"))
    return Config(
        source=source,
        base_dir=base_dir if base_dir is not None else Path.cwd(),
        host=root.string("host", what="a listen address"),
        port=port,
        max_request_body_mb=root.number(
            "max_request_body_mb", positive=True, maximum=MAX_REQUEST_BODY_MB
        ),
        shutdown_timeout_secs=root.number("shutdown_timeout_secs"),
        sleep_on_shutdown=root.boolean("sleep_on_shutdown"),
        alive_interval_secs=root.number("alive_interval_secs"),
        api_keys=root.string_list("api_keys"),
        admin_token=root.optional_string("admin_token"),
        proxy_paths=_proxy_paths(root),
        client_header_timeout_secs=root.number("client_header_timeout_secs", positive=True),
        client_body_timeout_secs=root.number("client_body_timeout_secs", positive=True),
        send_timeout_secs=root.number("send_timeout_secs", positive=True),
        keepalive_timeout_secs=root.number("keepalive_timeout_secs", positive=True),
        max_connections=root.integer("max_connections", low=1, high=MAX_CONNECTIONS_LIMIT),
        backlog=root.integer("backlog", low=1, high=MAX_BACKLOG),
        policy=_parse_policy(root.table("policy", PolicyConfig)),
        groups=groups,
        models=_parse_models(root.table("models"), groups, own_port=port),
    )


def _parse_policy(table: _Table) -> PolicyConfig:
    table.only(POLICY_KEYS)
    name = table.string("name", what="a policy name")
    if name not in BUILTIN_POLICIES:
        expected = f"expected one of {', '.join(BUILTIN_POLICIES)} or 'package.module:ClassName'"
        if ":" not in name:
            raise table.error("name", f"unknown policy {name!r}: {expected}")
        if not _looks_like_import_path(name):
            raise table.error("name", f"malformed policy import path {name!r}: {expected}")
    return PolicyConfig(
        name=name,
        # Omitted means unlimited (docs/design.md §2): the request still ends, bounded by the
        # wake hook's own timeout. The starter config sets 300 explicitly.
        request_timeout_secs=table.optional_number("request_timeout_secs", positive=True),
        drain_before_switch=table.boolean("drain_before_switch"),
        min_active_secs=table.number("min_active_secs"),
        drain_timeout_secs=table.number("drain_timeout_secs"),
        idle_sleep_secs=table.number("idle_sleep_secs"),
        max_queued_requests=table.integer("max_queued_requests", low=0, high=1_000_000),
        max_wait_secs=table.number("max_wait_secs", positive=True),
        staleness_factor=table.number("staleness_factor"),
        coalesce_ms=table.number("coalesce_ms", maximum=MAX_COALESCE_MS),
        linger_factor=table.number("linger_factor"),
        initial_switch_cost_secs=table.number("initial_switch_cost_secs"),
    )


def parse_policy(data: Mapping[str, Any], source: str) -> PolicyConfig:
    """A `[policy]` table given as a mapping (e.g. `aiollmux simulate --set`), validated
    exactly as in a configuration file."""
    return _parse_policy(_Table(source, "policy", data, PolicyConfig))


def _looks_like_import_path(name: str) -> bool:
    module, _, attribute = name.partition(":")
    return attribute.isidentifier() and all(part.isidentifier() for part in module.split("."))


def _parse_groups(table: _Table) -> dict[str, GroupConfig]:
    groups = {DEFAULT_GROUP: GroupConfig(name=DEFAULT_GROUP)}
    for name in table.data:
        entry = table.table(name, GroupConfig)
        if not name.strip():
            raise ConfigError(table.source, entry.path, "a group name must not be empty")
        entry.only(GROUP_KEYS)
        memory = entry.optional_number("memory_gb", positive=True)
        if memory is not None and memory > MAX_MEMORY_GB:
            raise entry.error("memory_gb", f"expected at most {MAX_MEMORY_GB:g} GiB, got {memory}")
        free_memory = entry.optional_string("free_memory")
        if free_memory is not None and memory is None:
            raise entry.error(
                "free_memory",
                "needs a memory budget: set memory_gb on this group (and on its models)",
            )
        groups[name] = GroupConfig(
            name=name,
            exclusive=entry.boolean("exclusive"),
            persistent=entry.boolean("persistent"),
            memory_gb=memory,
            free_memory=free_memory,
            free_memory_timeout_secs=entry.number("free_memory_timeout_secs", positive=True),
        )
    return groups


def _parse_models(
    table: _Table, groups: Mapping[str, GroupConfig], *, own_port: int
) -> dict[str, ModelConfig]:
    if not table.data:
        raise ConfigError(
            table.source, "models", "at least one model is required, e.g. [models.llama]"
        )
    models: dict[str, ModelConfig] = {}
    ports: dict[int, str] = {}
    for model_id in table.data:
        entry = table.table(model_id, ModelConfig)
        if not model_id.strip():
            raise ConfigError(table.source, entry.path, "a model id must not be empty")
        if "\0" in model_id:  # hooks get it in LLMUX_MODEL
            raise ConfigError(table.source, entry.path, "a model id must not contain NUL")
        model = _parse_model(model_id, entry, groups)
        if model.port in ports:
            raise entry.error(
                "port", f"port {model.port} is already used by model {ports[model.port]!r}"
            )
        if model.port == own_port:
            raise entry.error(
                "port", f"port {model.port} is aiollmux's own listen port (the top-level port)"
            )
        ports[model.port] = model_id
        models[model_id] = model
    _check_aliases(table, models)
    return models


def _check_aliases(table: _Table, models: Mapping[str, ModelConfig]) -> None:
    """Every id and alias names exactly one model."""
    owners: dict[str, str] = {}  # alias -> the model that lists it
    for model in models.values():
        entry = _Table(table.source, table.key(model.id), {})
        for index, alias in enumerate(model.aliases):
            if alias in models:
                message = f"alias {alias!r} is already the id of model {alias!r}"
            elif owners.get(alias) == model.id:
                first = model.aliases.index(alias)
                message = f"alias {alias!r} is listed twice (also at aliases[{first}])"
            elif alias in owners:
                message = f"alias {alias!r} is already an alias of model {owners[alias]!r}"
            else:
                owners[alias] = model.id
                continue
            raise entry.item_error("aliases", index, message)


def _parse_model(model_id: str, entry: _Table, groups: Mapping[str, GroupConfig]) -> ModelConfig:
    for name, value in entry.data.items():
        if isinstance(value, dict) and name not in MODEL_KEYS:
            # [models.llama3.1] is the table "1" inside "llama3": the id needed quotes.
            quoted = _quote_key(f"{model_id}.{name}")  # contains '.', so always quoted
            raise entry.error(
                name, f"unknown key; an id containing '.' must be quoted: [models.{quoted}]"
            )
    entry.only(MODEL_KEYS)
    command = "a hook command (a script path or inline shell)"
    group = entry.string("group", what="a group name")
    if group not in groups:
        declared = ", ".join(sorted(groups))
        raise entry.error(
            "group",
            f"unknown group {group!r}: declare it as [groups.{_quote_key(group)}]"
            f" (declared: {declared})",
        )
    preset = _parse_preset(entry)
    return ModelConfig(
        id=model_id,
        port=entry.integer("port", low=1, high=65535),
        wake=entry.string("wake", what=command, default=_preset_hook(preset, "wake")),
        sleep=entry.string("sleep", what=command, default=_preset_hook(preset, "sleep")),
        alive=entry.string("alive", what=command, default=_preset_hook(preset, "alive")),
        preset=None if preset is None else preset.name,
        env=_parse_env(entry.table("env")),
        wake_timeout_secs=entry.number("wake_timeout_secs", positive=True),
        sleep_timeout_secs=entry.number("sleep_timeout_secs", positive=True),
        alive_timeout_secs=entry.number("alive_timeout_secs", positive=True),
        aliases=entry.string_list("aliases"),
        upstream_model=entry.optional_string("upstream_model"),
        group=group,
        memory_gb=_model_memory(entry, groups[group]),
        # The preset's engine's native inference paths come with it (docs/design.md §5, §14).
        proxy_paths=_proxy_paths(entry) + (() if preset is None else preset.proxy_paths),
    )


def _model_memory(entry: _Table, group: GroupConfig) -> float | None:
    """A model's `memory_gb`: required in a budget group, and within it (docs/design.md §8)."""
    memory = entry.optional_number("memory_gb", positive=True)
    budget = group.memory_gb
    if budget is None:
        return memory
    where = f"groups.{_quote_key(group.name)}.memory_gb = {budget:g}"
    if memory is None:
        raise entry.error(
            "memory_gb",
            f"is required: group {group.name!r} has a memory budget ({where});"
            " expected the GiB this model occupies awake",
        )
    if memory > budget:
        raise entry.error(
            "memory_gb", f"{memory:g} GiB is more than its group's whole budget ({where})"
        )
    return memory


def _parse_preset(entry: _Table) -> presets.Preset | None:
    name = entry.optional_string("preset")
    if name is None:
        return None
    preset = presets.get(name)
    if preset is None:
        known = sorted(presets.available())
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise entry.error(
            "preset", f"unknown preset {name!r}: {hint}expected one of {', '.join(known)}"
        )
    return preset


def _preset_hook(preset: presets.Preset | None, name: HookName) -> str | None:
    return None if preset is None else preset.hook(name)


def _parse_env(table: _Table) -> dict[str, str]:
    """`[models.ID.env]`: environment variables (strings) for the model's hooks."""
    env: dict[str, str] = {}
    for name, value in table.data.items():
        if _ENV_NAME.fullmatch(name) is None:
            raise table.error(
                name, "not an environment variable name (letters, digits and '_', no digit first)"
            )
        if name.startswith(RESERVED_ENV_PREFIX):
            raise table.error(
                name, f"{RESERVED_ENV_PREFIX}* names are set by aiollmux for every hook run"
            )
        if not isinstance(value, str):
            raise table.error(
                name, f'expected a string (quote it: {name} = "…"), got {_describe(value)}'
            )
        if "\0" in value:
            raise table.error(name, "must not contain a NUL character")
        env[name] = value
    return env


def _proxy_paths(table: _Table) -> tuple[str, ...]:
    """Path prefixes, each starting with '/' and free of dot-segments and of `?`/`#`."""
    paths = table.string_list("proxy_paths")
    for index, path in enumerate(paths):
        if not path.startswith("/"):
            raise table.item_error(
                "proxy_paths", index, f"expected a path starting with '/', got {path!r}"
            )
        if "?" in path or "#" in path or any(seg in (".", "..") for seg in path.split("/")):
            raise table.item_error(
                "proxy_paths",
                index,
                f"expected a plain path prefix (no '?', '#', '.' or '..'), got {path!r}",
            )
    return paths


# Far above any real configuration; what a mistaken path (a log, /dev/zero) cannot pass.
MAX_CONFIG_BYTES: Final = 1024 * 1024


def read_config_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a configuration file: a regular file (after symlinks) of at most
    `MAX_CONFIG_BYTES`, else `ConfigError` naming why (docs/design.md §5). Blocking: run it off
    the event loop. A FIFO is opened without waiting for a writer, and refused."""
    source = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found (create one with `aiollmux init`)") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            kind = _file_kind(status.st_mode)
            raise ConfigError(source, "", f"not a regular file ({kind}); refusing to read it")
        if status.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(source, "", _too_large(status.st_size))
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(MAX_CONFIG_BYTES + 1)  # it may grow while being read
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(source, "", _too_large(len(data)))
    return data


def _too_large(size: int) -> str:
    return f"{size} bytes is too large for a configuration file (at most {MAX_CONFIG_BYTES})"


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
        stat.S_ISDIR: "a directory",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


def load_config(path: str | os.PathLike[str], data: bytes | None = None) -> Config:
    """Read and parse a configuration file (`data`: its bytes, already read)."""
    file = Path(path)
    source = str(file)
    raw = read_config_file(file) if data is None else data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    return parse_config(text, source, base_dir=file.resolve().parent)


def check_listen_port(config: Config, port: int) -> None:
    """No model may be served on `port`, where the daemon listens (a running daemon's
    port, which a reload cannot change): requests would loop through aiollmux itself."""
    for model in config.models.values():
        if model.port == port:
            raise ConfigError(
                config.source,
                f"models.{_quote_key(model.id)}.port",
                f"port {port} is the port aiollmux is listening on (a changed top-level "
                "port applies only after a restart)",
            )


def config_warnings(config: Config) -> list[str]:
    """What is valid but probably not meant: missing hook scripts, and a request timeout
    shorter than the wait cost-aware may impose (its requests would time out first)."""
    warnings = hook_warnings(config) + preset_warnings(config)
    policy = config.policy
    timeout = policy.request_timeout_secs
    if policy.name == "cost-aware" and timeout is not None and timeout < policy.max_wait_secs:
        warnings.append(
            f"{config.source}: policy.request_timeout_secs: {timeout:g} s is shorter than "
            f"max_wait_secs ({policy.max_wait_secs:g} s): requests may time out (504) while "
            "cost-aware keeps another model on the GPU"
        )
    return warnings


def log_config_warnings(config: Config) -> None:
    """`config_warnings` in the daemon's log (at start and after each reload)."""
    for warning in config_warnings(config):
        logger.warning("%s", warning, extra={"event": "config_warning"})


def hook_warnings(config: Config) -> list[str]:
    """Hooks whose first word names a script that is missing or not executable.

    Only a first word with a '/' is checked (a bare name is looked up on PATH by sh);
    relative paths are resolved from the config file's directory, where hooks run.
    """
    warnings: list[str] = []
    for model in config.models.values():
        for hook in HOOK_NAMES:
            program = _hook_program(model.hook(hook))
            if program is None:
                continue
            try:
                path = config.base_dir / Path(program).expanduser()
            except RuntimeError:  # ~user of an unknown user: sh will not find it either
                path = config.base_dir / program
            if not path.exists():
                problem = "does not exist"
            elif not path.is_file():
                problem = "is not a file"
            elif not os.access(path, os.X_OK):
                problem = "is not executable"
            else:
                continue
            key = f"models.{_quote_key(model.id)}.{hook}"
            warnings.append(f"{config.source}: {key}: {program} {problem} (looked for {path})")
    return warnings


def preset_warnings(config: Config) -> list[str]:
    """`[models.ID.env]` names that the model's preset does not read (a typo, most likely),
    each with the closest setting it knows."""
    warnings: list[str] = []
    for model in config.models.values():
        preset = presets.get(model.preset) if model.preset else None
        if preset is None:
            continue
        known = preset.setting_names
        for name in model.env:
            if name in known:
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "see `aiollmux presets`"
            key = f"models.{_quote_key(model.id)}.env.{_quote_key(name)}"
            warnings.append(
                f"{config.source}: {key}: the {preset.name} preset has no setting {name}; {hint}"
            )
    return warnings


def _hook_program(command: str) -> str | None:
    """The script a hook runs, when it can be told without running a shell."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:
        return None
    # Skip `NAME=value` prefixes: `CUDA_VISIBLE_DEVICES=0 ./wake.sh` runs ./wake.sh.
    while words and words[0].partition("=")[0].isidentifier() and "=" in words[0]:
        words.pop(0)
    if not words or "/" not in words[0] or "$" in words[0] or "`" in words[0]:
        return None
    return words[0]
