"""contrib/hooks/ollama against a fake Ollama whose unloads finish after their answer."""

from __future__ import annotations

import json

from tests.contrib.conftest import HookLab


def ollama(lab: HookLab, **extra: str) -> None:
    lab.start_fake("ollama", "serve", OLLAMA_HOST=f"127.0.0.1:{lab.port}", **extra)


def loaded(lab: HookLab) -> list[str]:
    models: list[str] = lab.fake_state()["loaded"]
    return models


def test_cycle_with_an_upstream_tag(hook_lab: HookLab) -> None:
    lab = hook_lab
    ollama(lab)
    tag = {"OLLAMA_MODEL": "qwen3:8b"}
    lab.ok("ollama", "wake", **tag)
    assert loaded(lab) == ["qwen3:8b"]
    assert lab.fake_state()["calls"] == [json.dumps({"keep_alive": -1, "model": "qwen3:8b"})]
    lab.ok("ollama", "alive", **tag)
    lab.ok("ollama", "wake", **tag)  # loaded already: loading again is harmless

    # Ollama answers the unload at once and frees the model later: the hook waited for it.
    lab.ok("ollama", "sleep", **tag)
    assert loaded(lab) == []
    assert lab.fails("ollama", "alive", **tag) == "ollama: qwen3:8b is not loaded (not in /api/ps)"
    lab.ok("ollama", "sleep", **tag)  # not loaded: fine


def test_a_fully_qualified_name_is_matched_by_its_short_form(hook_lab: HookLab) -> None:
    lab = hook_lab
    ollama(lab)
    name = {"OLLAMA_MODEL": "registry.ollama.ai/library/qwen3:8b"}
    lab.ok("ollama", "wake", **name)  # /api/ps lists it as qwen3:8b
    assert loaded(lab) == ["qwen3:8b"]
    lab.ok("ollama", "alive", **name)
    lab.ok("ollama", "sleep", **name)
    assert loaded(lab) == []


def test_a_name_without_tag_means_latest(hook_lab: HookLab) -> None:
    lab = hook_lab
    lab.model = "llama3.2"
    ollama(lab)
    lab.ok("ollama", "wake")
    assert loaded(lab) == ["llama3.2:latest"]
    lab.ok("ollama", "alive")
    lab.ok("ollama", "sleep")
    assert loaded(lab) == []


def test_all_models_mode_unloads_everything_ollama_loaded(hook_lab: HookLab) -> None:
    lab = hook_lab
    ollama(lab)
    everything = {"OLLAMA_ALL_MODELS": "1"}
    lab.ok("ollama", "wake", **everything)
    assert loaded(lab) == []  # nothing to preload: clients pick the models
    for model in ("qwen3:8b", "llama3.2"):  # what Ollama's own scheduler loaded for clients
        assert lab.post("/api/generate", {"model": model, "keep_alive": "5m"})[0] == 200
    assert loaded(lab) == ["llama3.2:latest", "qwen3:8b"]
    lab.ok("ollama", "alive", **everything)
    lab.ok("ollama", "sleep", **everything)
    assert loaded(lab) == []


def test_unknown_model_and_no_server_fail_clearly(hook_lab: HookLab) -> None:
    lab = hook_lab
    down = lab.fails("ollama", "wake")
    assert down == (
        f"ollama: Ollama is not answering at http://127.0.0.1:{lab.port} (nothing answers):"
        f" run 'OLLAMA_HOST=127.0.0.1:{lab.port} ollama serve' (as a service),"
        " or set OLLAMA_START=1"
    )
    lab.ok("ollama", "sleep")  # no server, nothing loaded
    ollama(lab)
    assert lab.fails("ollama", "wake", OLLAMA_MODEL="nope:1b") == (
        'ollama: loading nope:1b (POST /api/generate) answered HTTP 404: {"error": "model'
        ' \\"nope:1b\\" not found, try pulling it first"}'
    )
    lab.ok("ollama", "sleep", OLLAMA_MODEL="nope:1b")  # does not exist, so not loaded


def test_an_unload_that_never_finishes_times_out(hook_lab: HookLab) -> None:
    lab = hook_lab
    ollama(lab, FAKE_TRANSITION_SECS="30")
    lab.ok("ollama", "wake", OLLAMA_MODEL="qwen3:8b")
    assert lab.fails("ollama", "sleep", OLLAMA_MODEL="qwen3:8b", SLEEP_TIMEOUT_SECS="1") == (
        "ollama: timed out after 1s waiting for Ollama to unload qwen3:8b (/api/ps)"
    )


def test_wake_can_start_ollama_serve_on_the_models_port(hook_lab: HookLab) -> None:
    lab = hook_lab
    lab.ok("ollama", "wake", OLLAMA_MODEL="qwen3:8b", OLLAMA_START="1")
    assert loaded(lab) == ["qwen3:8b"]
    server = lab.pid("ollama")
    assert server is not None
    lab.ok("ollama", "sleep", OLLAMA_MODEL="qwen3:8b")
    assert loaded(lab) == []  # unloaded; `ollama serve` itself holds no GPU memory and stays
    assert lab.pid("ollama") == server
