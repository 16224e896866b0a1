"""The module layers docs/design.md §1 promises, read from the imports themselves."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aiollmux"


def project_imports(path: Path) -> set[str]:
    """Every `aiollmux…` module a file imports, at any depth (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("aiollmux"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "aiollmux":
                found.update(f"aiollmux.{alias.name}" for alias in node.names)
            elif node.module.startswith("aiollmux."):
                found.add(node.module)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): project_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_scan_sees_the_package() -> None:
    assert "aiollmux.switcher" in MODULES
    assert "aiollmux.tools.admin_client" in MODULES["aiollmux.cli"]


def test_the_daemon_imports_none_of_the_user_side_tools() -> None:
    offenders = {
        module: sorted(i for i in imports if i.startswith("aiollmux.tools"))
        for module, imports in MODULES.items()
        if not module.startswith("aiollmux.tools") and module != "aiollmux.cli"
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_nothing_but_the_entry_point_imports_the_cli() -> None:
    importers = [m for m, imports in MODULES.items() if "aiollmux.cli" in imports]
    assert importers == ["aiollmux.__main__"]


def test_config_and_errors_stand_on_their_own() -> None:
    # config reads the presets' files to validate `preset = …`; nothing else of the project
    assert MODULES["aiollmux.errors"] == set()
    assert MODULES["aiollmux.config"] <= {"aiollmux.errors", "aiollmux.presets"}
    assert MODULES["aiollmux.presets"] <= {"aiollmux.errors"}
