"""The starter configuration `aiollmux init` writes: two demo models that need no GPU.

The repository's default `llmux.toml` is this document with comments; a test keeps
the two in step. The defaults it lists are read from `config.defaults`, where they are written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiollmux.config import Config, PolicyConfig, defaults

if TYPE_CHECKING:
    from aiollmux.presets import Preset

# id -> (port, seconds the fake backend pretends to spend loading weights)
DEMO_MODELS = {"demo-small": (8001, 0.5), "demo-large": (8002, 1.5)}
# The starter's own choices, not defaults: a request gives up after 5 minutes (omitted, it
# waits as long as the wake may take), and a demo backend that is not up in a minute is broken.
REQUEST_TIMEOUT_SECS = 300
DEMO_WAKE_TIMEOUT_SECS = 60


def _at_defaults(table: type, *keys: str) -> dict[str, Any]:
    """These keys of `table` at their defaults (`config.defaults`, where they are written),
    as a person writes them: 64 rather than 64.0, lists rather than tuples."""
    found = defaults(table)
    written: dict[str, Any] = {}
    for key in keys:
        value = found[key]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        written[key] = list(value) if isinstance(value, tuple) else value
    return written


def _policy() -> dict[str, Any]:
    return {
        **_at_defaults(PolicyConfig, "name"),
        "request_timeout_secs": REQUEST_TIMEOUT_SECS,
        **_at_defaults(PolicyConfig, "drain_before_switch"),
    }


def starter_document() -> dict[str, Any]:
    models = {
        name: {
            "port": port,
            # The demo backend takes the model and port from LLMUX_MODEL/LLMUX_PORT.
            "wake": f"aiollmux demo-backend --detach --load-secs {load_secs}",
            "sleep": "aiollmux demo-backend --stop",
            "alive": "aiollmux demo-backend --check",
            "wake_timeout_secs": DEMO_WAKE_TIMEOUT_SECS,
        }
        for name, (port, load_secs) in DEMO_MODELS.items()
    }
    listed = ("max_request_body_mb", "shutdown_timeout_secs", "alive_interval_secs", "proxy_paths")
    return {
        **_at_defaults(Config, "host", "port", *listed),
        "policy": _policy(),
        "models": models,
    }


def preset_document(preset: Preset) -> dict[str, Any]:
    """The starter configuration of `aiollmux init --preset NAME`: two models using it."""
    models = {
        f"{preset.name}-{index}": {
            "port": 8000 + index,
            "preset": preset.name,
            "env": dict(preset.example_env),
        }
        for index in (1, 2)
    }
    return {**_at_defaults(Config, "host", "port"), "policy": _policy(), "models": models}
