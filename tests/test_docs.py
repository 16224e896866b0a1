"""The documentation cannot drift from the code: every configuration key is documented, and
the README links every guide."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from aiollmux import config

DOCS = Path(__file__).resolve().parents[1] / "docs"
REFERENCE = DOCS / "configuration.md"
# Filled in by the parser, not written in a file.
INTERNAL_FIELDS = {"source", "base_dir", "id", "name"}
# Where each table's keys are documented in configuration.md (the `## ` heading).
SECTIONS: dict[type, tuple[str, tuple[str, ...]]] = {
    config.Config: ("Top level", config.ROOT_KEYS),
    config.PolicyConfig: ("`[policy]`", config.POLICY_KEYS),
    config.ModelConfig: ("`[models.ID]`", config.MODEL_KEYS),
    config.GroupConfig: ("`[groups.NAME]`", config.GROUP_KEYS),
}
# Keys of the top level that are tables with a section of their own.
TABLES = {"policy": "`[policy]`", "models": "`[models.ID]`", "groups": "`[groups.NAME]`"}


def sections(text: str) -> dict[str, str]:
    """`## heading` -> the text up to the next `## ` heading."""
    parts = re.split(r"(?m)^## (.+)$", text)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def table_keys(text: str) -> set[str]:
    """The keys in the first column of the Markdown tables of `text`: | `key` | ..."""
    return set(re.findall(r"(?m)^\| `([a-z_]+)` \|", text))


def documented_keys(cls: type) -> tuple[str, set[str], set[str]]:
    heading, accepted = SECTIONS[cls]
    fields = {f.name for f in dataclasses.fields(cls)} - INTERNAL_FIELDS
    keys = (fields | set(accepted)) - set(TABLES)
    if cls is config.PolicyConfig:
        keys.add("name")  # the policy's name is a key of [policy], not internal
    return heading, keys, table_keys(sections(REFERENCE.read_text()).get(heading, ""))


@pytest.mark.parametrize("cls", list(SECTIONS), ids=lambda cls: cls.__name__)
def test_every_configuration_key_is_in_the_reference(cls: type) -> None:
    heading, keys, documented = documented_keys(cls)
    assert documented, f"docs/configuration.md has no table under '## {heading}'"
    missing = sorted(keys - documented)
    assert missing == [], f"docs/configuration.md, '## {heading}': document {missing}"
    unknown = sorted(documented - keys)
    assert unknown == [], f"docs/configuration.md, '## {heading}': no such key {unknown}"


def table_rows(text: str) -> dict[str, list[str]]:
    """key -> the cells after it, for the table rows of `text`."""
    rows = re.findall(r"(?m)^\| `([a-z_]+)` \|(.*)\|$", text)
    return {key: [cell.strip() for cell in rest.split("|")] for key, rest in rows}


def documented_default(default: object) -> set[str]:
    """How docs/configuration.md writes a default (the cells it may hold)."""
    if default is dataclasses.MISSING:
        return {"required"}
    if default is None:
        return {"none", "unlimited"}
    if isinstance(default, bool):
        return {f"`{str(default).lower()}`"}
    if isinstance(default, int | float):
        return {f"`{default:g}`"}
    if isinstance(default, str):
        return {f'`"{default}"`'}
    if isinstance(default, tuple):
        return {f"`{json.dumps(list(default))}`"}
    assert default == {}, f"no way to document the default {default!r}"
    return {"`{}`"}


@pytest.mark.parametrize("cls", list(SECTIONS), ids=lambda cls: cls.__name__)
def test_documented_defaults_are_the_real_ones(cls: type) -> None:
    # The one source of a default is its dataclass field (config.defaults): the reference
    # is a copy that must say the same, for every key.
    heading, keys = SECTIONS[cls]
    rows = table_rows(sections(REFERENCE.read_text())[heading])
    real = config.defaults(cls)
    for key in sorted(set(keys) - set(TABLES)):
        cell = rows[key][1]  # | `key` | type | default | meaning |
        expected = documented_default(real.get(key, dataclasses.MISSING))
        assert cell in expected, f"docs/configuration.md: {key} default {cell}, not {expected}"


def test_every_table_has_its_section() -> None:
    found = sections(REFERENCE.read_text())
    for key, heading in TABLES.items():
        assert key in config.ROOT_KEYS
        assert heading in found, f"docs/configuration.md needs a '## {heading}' section"


def test_builtin_policies_are_named_in_the_reference() -> None:
    policy = sections(REFERENCE.read_text())["`[policy]`"]
    for name in config.BUILTIN_POLICIES:
        assert f"`{name}`" in policy


def test_the_readme_links_every_guide() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    for guide in sorted(DOCS.glob("*.md")):
        assert f"](docs/{guide.name})" in readme, f"README.md does not link docs/{guide.name}"


def test_links_between_docs_resolve() -> None:
    contrib = sorted((DOCS.parent / "contrib").rglob("*.md"))
    for page in [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md")), *contrib]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: broken link to {target}"


REPO = DOCS.parent
CITING = ("aiollmux", "tests", "docs", "contrib", "benchmarks", "scripts")


def _texts() -> list[tuple[Path, str]]:
    suffixes = {".py", ".md", ".sh", ".toml", ".js", ".html", ".yaml", ".service", ".json"}
    found = []
    for top in CITING:
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and path.suffix in suffixes and "__pycache__" not in path.parts:
                found.append((path, path.read_text(errors="replace")))
    for path in (REPO / ".ci" / "run", REPO / "README.md", REPO / "pyproject.toml"):
        found.append((path, path.read_text(errors="replace")))
    return found


def test_every_design_citation_names_a_section_of_docs_design_md() -> None:
    # The contract the code was written against lives outside the repository; the code
    # cites docs/design.md, which a clone (and the sdist) has.
    headings = set(re.findall(r"(?m)^## (\d+)\. ", (DOCS / "design.md").read_text()))
    unresolved = []
    for path, text in _texts():
        if "DESIGN" + " §" in text:
            unresolved.append(
                f"{path.relative_to(REPO)}: cites DESIGN.md, which is not in the repo"
            )
        for number in re.findall(r"docs/design\.md §(\d+)", text):
            if number not in headings:
                unresolved.append(f"{path.relative_to(REPO)}: docs/design.md §{number}")
    assert unresolved == []
