"""Hook presets (docs/design.md §14): the tested hook sets of contrib/hooks, shipped in the package.

Each set is a directory here with wake.sh, sleep.sh, alive.sh and a `preset.toml` manifest
(description, settings with their defaults, whether sleep keeps the server up, the engine's
native inference paths); `common.toml` holds the settings every set shares. This directory
and contrib/hooks are the same files (tests/test_presets.py checks it). A leaf module: it
imports nothing else of aiollmux, so `config` can use it.
"""

from __future__ import annotations

import functools
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

PRESETS_DIR: Final = Path(__file__).resolve().parent
MANIFEST: Final = "preset.toml"
COMMON_MANIFEST: Final = "common.toml"


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    name: str
    default: str
    description: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    name: str
    description: str
    directory: Path
    # The set's own settings first, then those of common.sh.
    settings: tuple[Setting, ...]
    # Sleep leaves the server answering on its port (vLLM's and SGLang's sleep modes).
    server_stays_on_sleep: bool
    # The engine's native inference paths besides /v1/ (e.g. Ollama's /api/chat): data for
    # the proxy's per-model paths (docs/design.md §5), wired there, not here.
    proxy_paths: tuple[str, ...]
    example_env: Mapping[str, str] = field(default_factory=dict)

    def hook(self, name: Literal["wake", "sleep", "alive"]) -> str:
        """The hook command: `sh` on the script, so no execute bit is needed once installed."""
        return f"sh {shlex.quote(str(self.directory / f'{name}.sh'))}"

    @property
    def setting_names(self) -> tuple[str, ...]:
        return tuple(setting.name for setting in self.settings)


class PresetError(Exception):
    """A preset manifest in the package is broken (a packaging bug, not a user error)."""


def _settings(document: Mapping[str, Any], source: Path) -> tuple[Setting, ...]:
    settings = []
    for name, entry in document.get("settings", {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("description"), str):
            raise PresetError(f"{source}: settings.{name}: expected a table with a description")
        settings.append(
            Setting(
                name=name, default=str(entry.get("default", "")), description=entry["description"]
            )
        )
    return tuple(settings)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise PresetError(f"{path}: {error}") from None


@functools.cache
def available() -> Mapping[str, Preset]:
    """Every preset shipped in the package, by name, sorted."""
    common = _settings(_read(PRESETS_DIR / COMMON_MANIFEST), PRESETS_DIR / COMMON_MANIFEST)
    presets: dict[str, Preset] = {}
    for manifest in sorted(PRESETS_DIR.glob(f"*/{MANIFEST}")):
        document = _read(manifest)
        directory = manifest.parent
        presets[directory.name] = Preset(
            name=directory.name,
            description=str(document.get("description", "")),
            directory=directory,
            settings=_settings(document, manifest) + common,
            server_stays_on_sleep=bool(document.get("server_stays_on_sleep", False)),
            proxy_paths=tuple(document.get("proxy_paths", ())),
            example_env=dict(document.get("example_env", {})),
        )
    return presets


def get(name: str) -> Preset | None:
    return available().get(name)
