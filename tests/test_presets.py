"""Hook presets (docs/design.md §14): shipped in the package, `preset = …`, `[models.ID.env]`,
`aiollmux presets`, `init --preset`, `check`'s warnings, and env changes taking effect on reload.
"""

from __future__ import annotations

import filecmp
import os
import re
import shlex
import stat
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from aiollmux import presets
from aiollmux.cli import main
from aiollmux.config import config_warnings, load_config, parse_config
from aiollmux.errors import ConfigError
from aiollmux.hooks import hook_environment
from tests.support import Lab, running_daemon, wait_for

REPO = Path(__file__).resolve().parents[1]
CONTRIB = REPO / "contrib" / "hooks"
SETS = ("docker", "llamacpp", "ollama", "sglang", "vllm")
SYNC_HINT = (
    "contrib/hooks and aiollmux/presets must be the same files:"
    " cp -a contrib/hooks/. aiollmux/presets/"
)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _tree(root: Path) -> dict[str, Path]:
    return {
        str(path.relative_to(root)): path
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.name != "__init__.py"
    }


# -- one source of truth, shipped -------------------------------------------------------


def test_the_package_copy_is_contrib_hooks_file_for_file() -> None:
    contrib, packaged = _tree(CONTRIB), _tree(presets.PRESETS_DIR)
    assert sorted(packaged) == sorted(contrib), SYNC_HINT
    for name, path in contrib.items():
        assert filecmp.cmp(path, packaged[name], shallow=False), f"{name} differs: {SYNC_HINT}"
        executable = bool(path.stat().st_mode & stat.S_IXUSR)
        assert executable == bool(packaged[name].stat().st_mode & stat.S_IXUSR), name


def test_every_set_is_a_preset_with_its_scripts_and_settings() -> None:
    available = presets.available()
    assert tuple(available) == SETS
    for preset in available.values():
        for hook in ("wake", "sleep", "alive"):
            assert (preset.directory / f"{hook}.sh").is_file()
        assert preset.description
        # Every variable the set's scripts read with a default is a declared setting.
        declared = set(preset.setting_names)
        scripts = [*preset.directory.glob("*.sh"), presets.PRESETS_DIR / "common.sh"]
        read = {
            name
            for script in scripts
            for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*):?[-+]", script.read_text())
            if not name.startswith("LLMUX_")
        }
        read -= {"XDG_RUNTIME_DIR", "TMPDIR", "BACKEND"}  # not settings: the system's, a name
        assert read <= declared, f"{preset.name}: undeclared settings {read - declared}"
    assert available["ollama"].proxy_paths == (
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
    )
    assert available["vllm"].server_stays_on_sleep
    assert not available["llamacpp"].server_stays_on_sleep


def test_wheel_and_sdist_ship_the_presets(tmp_path: Path) -> None:
    builders = pytest.importorskip("hatchling.builders.wheel", reason="hatchling (test extra)")
    from hatchling.builders.sdist import SdistBuilder

    wheel = Path(builders.WheelBuilder(str(REPO)).build(directory=str(tmp_path)).__next__())
    sdist = Path(SdistBuilder(str(REPO)).build(directory=str(tmp_path)).__next__())
    wanted = {f"aiollmux/presets/{name}" for name in _tree(presets.PRESETS_DIR)}
    with zipfile.ZipFile(wheel) as archive:
        assert wanted <= set(archive.namelist())
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert wanted <= names


# -- configuration ---------------------------------------------------------------------


def _config(model: str, extra: str = "") -> str:
    return f"[models.m]\nport = 8001\n{model}\n{extra}"


def test_a_preset_stands_for_the_three_hooks_and_explicit_ones_win() -> None:
    config = parse_config(_config('preset = "llamacpp"\nalive = "./mine.sh"'))
    model = config.models["m"]
    script = presets.PRESETS_DIR / "llamacpp" / "wake.sh"
    assert model.wake == f"sh {shlex.quote(str(script))}"
    assert model.sleep.endswith("llamacpp/sleep.sh")
    assert model.alive == "./mine.sh"
    assert model.preset == "llamacpp"


@pytest.mark.parametrize(
    ("model", "extra", "key", "message"),
    [
        ('preset = "llama"', "", "models.m.preset", "unknown preset 'llama': did you mean"),
        ('preset = "nope"', "", "models.m.preset", "expected one of docker, llamacpp, ollama"),
        ("", "", "models.m.wake", "is required"),
        (
            'preset = "llamacpp"',
            '[models.m.env]\nLLMUX_PORT = "1"',
            "models.m.env.LLMUX_PORT",
            "LLMUX_* names are set by aiollmux",
        ),
        (
            'preset = "llamacpp"',
            "[models.m.env]\nPOLL_SECS = 0.1",
            "models.m.env.POLL_SECS",
            'expected a string (quote it: POLL_SECS = "…"), got the number 0.1',
        ),
        ("preset = 'vllm'", '[models.m.env]\n"A B" = "x"', 'models.m.env."A B"', "not an env"),
        ("preset = 'vllm'", "env = 3", "models.m.env", "expected a table"),
    ],
)
def test_bad_presets_and_env_tables_are_config_errors(
    model: str, extra: str, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(model, extra), "cfg.toml")
    assert caught.value.key == key
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"cfg.toml: {key}: ")


def test_env_wins_over_the_daemons_own_but_not_over_llmux(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLL_SECS", "9")
    monkeypatch.setenv("KEEP_ME", "daemon")
    text = _config("wake = 'w'\nsleep = 's'\nalive = 'a'", '[models.m.env]\nPOLL_SECS = "0.1"')
    env = hook_environment(parse_config(text).models["m"], "wake")
    assert env["POLL_SECS"] == "0.1"
    assert env["KEEP_ME"] == "daemon"
    assert env["LLMUX_MODEL"] == "m"
    assert env["LLMUX_PORT"] == "8001"


def test_check_warns_about_a_setting_the_preset_does_not_read(tmp_path: Path) -> None:
    path = tmp_path / "llmux.toml"
    path.write_text(
        _config(
            'preset = "llamacpp"',
            '[models.m.env]\nLLAMA_MODEL_PTH = "/m.gguf"\nPOLL_SECS = "0.1"\nZZZ = "1"',
        )
    )
    warnings = config_warnings(load_config(path))
    assert warnings == [
        f"{path}: models.m.env.LLAMA_MODEL_PTH: the llamacpp preset has no setting"
        " LLAMA_MODEL_PTH; did you mean LLAMA_MODEL_PATH?",
        f"{path}: models.m.env.ZZZ: the llamacpp preset has no setting ZZZ; see `aiollmux presets`",
    ]
    result = invoke("check", "-c", str(path))
    assert result.exit_code == 0, result.output
    assert "model m: port 8001 (preset llamacpp)" in result.stdout
    assert "did you mean LLAMA_MODEL_PATH?" in result.stderr


# -- the CLI ---------------------------------------------------------------------------


def test_presets_lists_every_preset_with_its_settings() -> None:
    result = invoke("presets")
    assert result.exit_code == 0, result.output
    for preset in presets.available().values():
        assert f"{preset.name}: {preset.description}\n" in result.stdout
    assert "  LLAMA_MODEL_PATH      the .gguf file" in result.stdout
    assert "(default: 570)" in result.stdout  # WAKE_TIMEOUT_SECS, shared by every set
    assert "native paths: /api/chat, /api/generate" in result.stdout


def test_init_with_a_preset_writes_a_config_that_uses_it(tmp_path: Path) -> None:
    target = tmp_path / "llmux.toml"
    result = invoke("init", "--preset", "llamacpp", str(target))
    assert result.exit_code == 0, result.output
    text = target.read_text()
    assert text.startswith("# aiollmux configuration written by `aiollmux init --preset llamacpp`")
    config = load_config(target)
    assert {m.preset for m in config.models.values()} == {"llamacpp"}
    assert all(m.env["LLAMA_MODEL_PATH"].endswith(".gguf") for m in config.models.values())
    assert config_warnings(config) == []
    assert tomllib.loads(text)["models"]["llamacpp-1"]["preset"] == "llamacpp"
    again = invoke("init", "--preset", "llamacpp", str(target))
    assert again.exit_code == 1  # never overwrites


def test_init_with_an_unknown_preset_names_the_known_ones(tmp_path: Path) -> None:
    result = invoke("init", "--preset", "tgi", str(tmp_path / "x.toml"))
    assert result.exit_code == 2
    assert result.stderr == (
        "error: unknown preset 'tgi': expected one of docker, llamacpp, ollama, sglang, vllm\n"
    )
    assert not (tmp_path / "x.toml").exists()


# -- env in the running daemon ----------------------------------------------------------


async def test_a_reload_changes_the_env_of_the_next_hook_run(lab: Lab) -> None:
    await lab.add_backends("alpha")
    seen = lab.tmp / "seen"
    wake = f'echo "$GREETING" >> {shlex.quote(str(seen))}; touch {lab.state_dir}/alpha.awake'
    path = lab.tmp / "llmux.toml"
    text = lab.config_text(hooks={"alpha": {"wake": wake}})
    path.write_text(text + '[models."alpha".env]\nGREETING = "one"\n')
    async with running_daemon(load_config(path)) as daemon:
        async with await daemon.chat("alpha") as response:
            assert response.status == 200
        path.write_text(text + '[models."alpha".env]\nGREETING = "two"\n')
        await wait_for(lambda: daemon.mux.generation == 2)
        async with daemon.client.post(daemon.url + "/admin/sleep") as response:
            assert response.status == 200
        async with await daemon.chat("alpha") as response:
            assert response.status == 200
    assert seen.read_text().splitlines() == ["one", "two"]
    assert lab.violations() == []
    assert os.environ.get("GREETING") is None  # the daemon's own environment is untouched
