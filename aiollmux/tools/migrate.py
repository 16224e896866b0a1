"""`aiollmux migrate`: an llmux 2.x YAML or JSON config turned into aiollmux TOML.

llmux and aiollmux share their keys (models with port/wake/sleep/alive, a policy with
request_timeout_secs/drain_before_switch/min_active_secs, port); keys aiollmux does not
know are dropped with a warning, never guessed at.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomli_w

from aiollmux.errors import ConfigError

_TOP = {"port": "port", "bind_address": "host", "host": "host"}
_POLICY = {
    "request_timeout_secs": "request_timeout_secs",
    "drain_before_switch": "drain_before_switch",
    "min_active_secs": "min_active_secs",
}
_MODEL = ("port", "wake", "sleep", "alive")
_POLICY_NAMES = {"fifo": "fifo"}


def load_llmux(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror}") from None
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ConfigError(source, "", f"invalid JSON: {exc}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                source,
                "",
                "reading YAML needs PyYAML: pip install pyyaml (or aiollmux's yaml extra)",
            ) from None
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(source, "", f"invalid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(source, "", "expected a mapping at the top level")
    return document


def convert(document: dict[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """The aiollmux document and the warnings (dropped or rewritten keys)."""
    warnings: list[str] = []
    result: dict[str, Any] = {}
    for key, value in document.items():
        if key in _TOP:
            result[_TOP[key]] = value
        elif key not in ("models", "policy"):
            warnings.append(f"{key}: not an aiollmux setting; dropped")
    policy = document.get("policy") or {}
    if not isinstance(policy, dict):
        raise ConfigError(source, "policy", "expected a mapping")
    converted_policy: dict[str, Any] = {}
    for key, value in policy.items():
        if key in _POLICY and value is not None:  # null timeout = unlimited = omitted
            converted_policy[_POLICY[key]] = value
        elif key == "policy_type" and value in _POLICY_NAMES:
            converted_policy["name"] = _POLICY_NAMES[value]
        elif key not in _POLICY:
            warnings.append(f"policy.{key}: not supported by aiollmux; dropped")
    if converted_policy:
        result["policy"] = converted_policy
    models = document.get("models")
    if not isinstance(models, dict) or not models:
        raise ConfigError(source, "models", "expected a mapping of at least one model")
    result["models"] = {}
    for name, model in models.items():
        if not isinstance(model, dict):
            raise ConfigError(source, f"models.{name}", "expected a mapping")
        entry = {key: model[key] for key in _MODEL if key in model}
        for key in model:
            if key not in _MODEL:
                warnings.append(f"models.{name}.{key}: not supported by aiollmux; dropped")
        for hook in ("wake", "sleep", "alive"):
            if isinstance(entry.get(hook), str) and "LLMUX_DEST_PORT" in entry[hook]:
                warnings.append(
                    f"models.{name}.{hook}: uses $LLMUX_DEST_PORT; aiollmux sets it too, "
                    "but $LLMUX_PORT is the documented name"
                )
        result["models"][name] = entry
    return result, warnings


# llmux forwarded every path; aiollmux only `proxy_paths` (docs/design.md §5).
PROXY_PATHS_NOTE = """\
# llmux forwarded requests on any path to the models; aiollmux forwards only the paths in
# proxy_paths (default ["/v1/"]), so a client cannot reach a backend's private endpoints
# (/sleep, /api/delete, ...). To forward every path as llmux did, uncomment:
# proxy_paths = ["/"]

"""


def migrate(path: Path) -> tuple[str, list[str]]:
    document, warnings = convert(load_llmux(path), str(path))
    return PROXY_PATHS_NOTE + tomli_w.dumps(document), warnings
