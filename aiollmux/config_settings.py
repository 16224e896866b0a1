"""The settings a configuration puts in force, one key a line, for `aiollmux check --settings`:
those left at their defaults (`config.defaults`, where defaults are written) are marked, and
secrets (`admin_token`, `api_keys`, `[models.ID.env]` values) are never shown.
"""

from __future__ import annotations

import json

from aiollmux.config import TABLE_KEYS, Config, defaults, key_path

DEFAULT_MARK = "  # default"
SECRETS = frozenset({"admin_token", "api_keys"})
# Keys that hold tables, listed with their own key paths.
TABLES = frozenset({"policy", "models", "groups", "env"})


def settings_lines(config: Config) -> list[str]:
    """`key.path = value`, every key of the file in the order of docs/configuration.md."""
    lines = _table_lines(config, Config, ())
    lines += _table_lines(config.policy, type(config.policy), ("policy",))
    for name, group in sorted(config.groups.items()):
        lines += _table_lines(group, type(group), ("groups", name))
    for model_id, model in sorted(config.models.items()):
        lines += _table_lines(model, type(model), ("models", model_id))
        for variable in model.env:
            lines.append(f"{key_path('models', model_id, 'env', variable)} = (set, not shown)")
    return lines


def _table_lines(values: object, table: type, path: tuple[str, ...]) -> list[str]:
    known = defaults(table)
    lines = []
    for key in TABLE_KEYS[table]:
        if key in TABLES:
            continue
        value = getattr(values, key)
        line = f"{key_path(*path, key)} = {_shown(key, value)}"
        if key in known and value == known[key]:
            line += DEFAULT_MARK
        lines.append(line)
    return lines


def _shown(key: str, value: object) -> str:
    """A value as TOML writes it; `(not set)` for a key left unset."""
    if value is None:
        return "(not set)"
    if key in SECRETS and value != ():
        return f"({len(value)} keys, not shown)" if isinstance(value, tuple) else "(set, not shown)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 64, as the file would say, not 64.0
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(item, ensure_ascii=False) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
