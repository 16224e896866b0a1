"""The starter configuration `aiollmux init` writes: two demo models that need no GPU.

The repository's default `llmux.toml` is this document with comments; a test keeps
the two in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiollmux.presets import Preset

# id -> (port, seconds the fake backend pretends to spend loading weights)
DEMO_MODELS = {"demo-small": (8001, 0.5), "demo-large": (8002, 1.5)}


def starter_document() -> dict[str, Any]:
    models = {
        name: {
            "port": port,
            # The demo backend takes the model and port from LLMUX_MODEL/LLMUX_PORT.
            "wake": f"aiollmux demo-backend --detach --load-secs {load_secs}",
            "sleep": "aiollmux demo-backend --stop",
            "alive": "aiollmux demo-backend --check",
            "wake_timeout_secs": 60,
        }
        for name, (port, load_secs) in DEMO_MODELS.items()
    }
    return {
        "host": "127.0.0.1",
        "port": 3000,
        "max_request_body_mb": 64,
        "shutdown_timeout_secs": 30,
        "alive_interval_secs": 30,
        "proxy_paths": ["/v1/"],
        "policy": {"name": "fifo", "request_timeout_secs": 300, "drain_before_switch": True},
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
    return {
        "host": "127.0.0.1",
        "port": 3000,
        "policy": {"name": "fifo", "request_timeout_secs": 300, "drain_before_switch": True},
        "models": models,
    }
