"""Where the real tier finds its engine and models (docs/design.md §15), and how it says they are
missing: a skip with the reason, or a failure where AIOLLMUX_REQUIRE_REAL=1 (CI)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

LLAMA_CPP_PYTHON = "0.3.16"  # scripts/build-llama-server's VERSION
REPO = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("AIOLLMUX_CACHE") or Path.home() / ".cache" / "aiollmux")


def missing(reason: str) -> NoReturn:
    if os.environ.get("AIOLLMUX_REQUIRE_REAL") == "1":
        pytest.fail(f"AIOLLMUX_REQUIRE_REAL=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def llama_server() -> Path:
    binary = Path(
        os.environ.get("LLAMA_SERVER_BIN")
        or cache_dir() / f"llama-server-{LLAMA_CPP_PYTHON}" / "llama-server"
    )
    if not os.access(binary, os.X_OK):
        missing(f"no llama-server at {binary}: run scripts/build-llama-server")
    return binary


def tiny_models() -> dict[str, Path]:
    models = {name: cache_dir() / "models" / f"{name}.gguf" for name in ("tiny-a", "tiny-b")}
    for path in models.values():
        if not path.is_file():
            missing(f"no model at {path}: run scripts/make-tiny-gguf")
    return models
