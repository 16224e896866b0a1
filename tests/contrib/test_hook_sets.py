"""What every contrib hook set shares: valid POSIX sh, its preconditions, its docs and snippet."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aiollmux.config import HOOK_NAMES, hook_warnings, load_config
from tests.contrib.conftest import BACKENDS, HOOKS, HookLab

SCRIPTS = sorted(HOOKS.rglob("*.sh"))
ENTRY_POINTS = [HOOKS / backend / f"{hook}.sh" for backend in BACKENDS for hook in HOOK_NAMES]


def test_every_backend_has_a_complete_set() -> None:
    for backend in BACKENDS:
        directory = HOOKS / backend
        for hook in HOOK_NAMES:
            script = directory / f"{hook}.sh"
            assert script.read_text().startswith("#!/bin/sh\n"), script
            assert os.access(script, os.X_OK), f"{script} is not executable"
        assert (directory / "README.md").is_file()
        assert (directory / "llmux.toml").is_file()
    assert sorted(p.name for p in HOOKS.iterdir() if p.is_dir()) == sorted(BACKENDS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(HOOKS)))
def test_scripts_parse_as_posix_sh(script: Path) -> None:
    for shell in ("sh", "dash", "bash"):
        if shell == "sh" or shutil.which(shell):
            checked = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
            assert checked.returncode == 0, f"{shell} -n {script}: {checked.stderr}"


def test_shellcheck_finds_nothing() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck); sh -n ran above")
    checked = subprocess.run(
        [shellcheck, "--shell=sh", "--external-sources", "--source-path=SCRIPTDIR"]
        + [str(script) for script in ENTRY_POINTS],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_curl_every_hook_says_so(hook_lab: HookLab, backend: str) -> None:
    no_curl = hook_lab.tmp / "no-curl"
    no_curl.mkdir()
    for tool in ("dirname",):  # all a hook runs before it looks for curl
        located = shutil.which(tool)
        assert located is not None
        (no_curl / tool).symlink_to(located)
    for hook in HOOK_NAMES:
        line = hook_lab.fails(backend, hook, PATH=str(no_curl))
        assert line.endswith(
            ": curl not found on PATH (install curl on this machine:"
            " the hooks use it to talk to the backend)"
        ), line


@pytest.mark.parametrize("backend", BACKENDS)
def test_outside_aiollmux_the_missing_variables_are_named(hook_lab: HookLab, backend: str) -> None:
    for hook in HOOK_NAMES:
        line = hook_lab.fails(backend, hook, LLMUX_PORT="")
        assert line.endswith(
            ": LLMUX_PORT is not set: run this as an aiollmux hook"
            " (or export LLMUX_PORT and LLMUX_MODEL)"
        ), line
    assert hook_lab.fails(backend, "alive", LLMUX_PORT="80a").endswith(
        ": LLMUX_PORT is not a port number: 80a"
    )
    assert hook_lab.fails(backend, "wake", WAKE_TIMEOUT_SECS="soon").endswith(
        ": timeout must be a number of seconds, got 'soon'"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_snippet_is_a_valid_config_once_hooks_sit_beside_it(backend: str, tmp_path: Path) -> None:
    shutil.copytree(HOOKS, tmp_path / "hooks")
    config_file = tmp_path / "llmux.toml"
    shutil.copy(HOOKS / backend / "llmux.toml", config_file)
    config = load_config(config_file)
    assert config.models
    assert hook_warnings(config) == []
    for model in config.models.values():
        for hook in HOOK_NAMES:
            assert f"./hooks/{backend}/{hook}.sh" in model.hook(hook)


@pytest.mark.parametrize("backend", BACKENDS)
def test_readme_documents_every_setting(backend: str) -> None:
    """A setting added to a hook set's lib.sh cannot go undocumented in its README."""
    settings = set(
        re.findall(r"(?m)^([A-Z][A-Z0-9_]*)=\$\{\1", (HOOKS / backend / "lib.sh").read_text())
    )
    assert settings
    readme = (HOOKS / backend / "README.md").read_text()
    missing = sorted(name for name in settings if f"`{name}`" not in readme)
    assert missing == [], f"{backend}/README.md does not document {missing}"


def test_a_run_dir_of_another_user_is_refused(hook_lab: HookLab, tmp_path: Path) -> None:
    """Pidfiles name process groups that sleep signals: never trust someone else's."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    if os.geteuid() == 0:
        os.chown(foreign, 65534, 65534)  # nobody
    else:
        foreign = Path("/")  # root's
    (hook_lab.tmp / "m").write_bytes(b"GGUF")
    line = hook_lab.fails("llamacpp", "wake", AIOLLMUX_RUN_DIR=str(foreign), LLAMA_MODEL_PATH="m")
    assert line == f"llamacpp: AIOLLMUX_RUN_DIR {foreign} belongs to another user"
