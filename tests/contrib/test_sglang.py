"""contrib/hooks/sglang against a fake SGLang that refuses to release or resume twice and,
like the real one, loses its weights in a release without --enable-weights-cpu-backup."""

from __future__ import annotations

from tests.contrib.conftest import HookLab
from tests.contrib.fake_containers import process_alive

SGLANG = {"SGLANG_PYTHON": "python-sglang"}  # the fake, on the lab's PATH


def test_cycle_releases_and_resumes_exactly_once(hook_lab: HookLab) -> None:
    lab = hook_lab
    lab.ok("sglang", "wake", **SGLANG)  # starts the server, waits out the 503s of /health
    assert lab.get("/health")[0] == 200
    assert lab.post("/v1/completions", {"prompt": "hi"})[0] == 200
    server = lab.pid("sglang")
    assert server is not None
    lab.ok("sglang", "alive")
    lab.ok("sglang", "wake", **SGLANG)  # awake: nothing to resume
    assert lab.fake_state()["calls"] == []

    lab.ok("sglang", "sleep")
    assert lab.fake_state()["released"] is True
    assert lab.fails("sglang", "alive") == (
        f"sglang: SGLang on port {lab.port} has released its memory (asleep)"
    )
    lab.ok("sglang", "sleep")  # a second release would be an error: none is sent
    lab.ok("sglang", "wake", **SGLANG)
    lab.ok("sglang", "wake", **SGLANG)  # a second resume would be an error: none is sent
    assert lab.fake_state() == {
        "released": False,
        "calls": ["POST /release_memory_occupation", "POST /resume_memory_occupation"],
    }
    lab.ok("sglang", "alive")
    assert lab.pid("sglang") == server
    # The weights survived the release (the wake hook asked for a CPU backup).
    assert lab.post("/v1/completions", {"prompt": "hi"})[0] == 200


def test_stop_mode_and_the_clean_up_after_a_failed_wake(hook_lab: HookLab) -> None:
    lab = hook_lab
    line = lab.fails("sglang", "wake", FAKE_LOAD_SECS="30", WAKE_TIMEOUT_SECS="1", **SGLANG)
    # Timed out while the process started, or (more often) while the model loaded.
    assert line in (
        f"sglang: timed out after 1s waiting for SGLang ({lab.model}) to answer on port {lab.port}",
        f"sglang: timed out after 1s waiting for SGLang on port {lab.port} to answer /health",
    )
    server = lab.pid("sglang")
    assert server is not None
    lab.ok("sglang", "sleep", SGLANG_SLEEP="stop")
    assert not process_alive(server)
    assert not lab.port_answers()


def test_a_released_marker_of_a_gone_server_is_ignored(hook_lab: HookLab) -> None:
    lab = hook_lab
    lab.ok("sglang", "wake", **SGLANG)
    lab.ok("sglang", "sleep")
    lab.ok("sglang", "sleep", SGLANG_SLEEP="stop")  # the released server is stopped
    # A fresh server starts with its memory held: wake must not try to resume it.
    lab.ok("sglang", "wake", **SGLANG)
    assert lab.fake_state()["calls"] == []
    lab.ok("sglang", "alive")


def test_a_server_without_the_memory_saver_is_reported(hook_lab: HookLab) -> None:
    lab = hook_lab
    args = ["-m", "sglang.launch_server", "--model-path", "m", "--port", str(lab.port)]
    lab.start_fake("sglang", *args)
    # A server run by someone else is used as it is, once it serves this model.
    lab.ok("sglang", "wake", **SGLANG, SGLANG_MODEL_PATH="m")
    assert lab.fails("sglang", "sleep") == (
        "sglang: POST /release_memory_occupation answered HTTP 500:"
        ' {"error": "memory saver is not enabled"}'
    )
    assert lab.fails("sglang", "sleep", SGLANG_SLEEP="stop") == (
        f"sglang: SGLang answers on port {lab.port} but was not started by these hooks"
        f" (no live process in {lab.run_dir}/sglang-{lab.port}.pid): stop it yourself,"
        " or use SGLANG_SLEEP=release"
    )
