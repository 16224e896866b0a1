"""contrib/hooks/vllm against a fake vLLM that sleeps and wakes like the real one (sleep mode)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.contrib.conftest import HookLab
from tests.contrib.fake_containers import process_alive


def worker_pid(lab: HookLab) -> int:
    """The fake engine-core worker's pid, once the fake server has started it."""
    pidfile = lab.state_dir / f"vllm-worker-{lab.port}.pid"
    deadline = time.monotonic() + 20
    while not pidfile.exists() or not pidfile.read_text():  # another process writes it
        assert time.monotonic() < deadline, f"{pidfile} never appeared"
        time.sleep(0.01)
    return int(pidfile.read_text())


def test_level_1_cycle_waits_for_the_real_state_and_is_idempotent(hook_lab: HookLab) -> None:
    lab = hook_lab
    lab.ok("vllm", "wake")  # nothing runs: starts `vllm serve` and waits for /health
    state = lab.fake_state()
    assert state["dev_mode"] is True
    assert state["args"][:2] == ["serve", lab.model]
    assert "--enable-sleep-mode" in state["args"]
    assert ["--port", str(lab.port)] == state["args"][4:6]
    server = lab.pid("vllm")
    assert server is not None
    assert process_alive(server)
    lab.ok("vllm", "alive")
    lab.ok("vllm", "wake")  # awake already: nothing to do
    assert lab.pid("vllm") == server
    assert lab.fake_state()["calls"] == []

    lab.ok("vllm", "sleep")
    # The fake answers /sleep at once and frees the memory later: the hook waited for that.
    state = lab.fake_state()
    assert state["sleeping"] is True
    assert (state["weights"], state["kv_cache"]) == ("cpu", "discarded")
    assert lab.fails("vllm", "alive") == f"vllm: vLLM on port {lab.port} is asleep"
    lab.ok("vllm", "sleep")  # asleep already: no second /sleep
    assert lab.fake_state()["calls"] == ["POST /sleep?level=1"]

    lab.ok("vllm", "wake")
    assert lab.fake_state()["sleeping"] is False
    assert lab.fake_state()["calls"][-1] == "POST /wake_up"
    assert lab.post("/v1/completions", {"prompt": "hi"})[0] == 200
    lab.ok("vllm", "alive")


def test_level_2_wake_reloads_the_weights_whatever_the_level_now_says(
    hook_lab: HookLab,
) -> None:
    lab = hook_lab
    lab.ok("vllm", "wake")
    lab.ok("vllm", "sleep", VLLM_SLEEP_LEVEL="2", VLLM_SLEEP_MODE="wait")
    assert lab.fake_state()["weights"] == "discarded"
    # The level used at sleep time was recorded: a plain /wake_up would serve garbage.
    lab.ok("vllm", "wake", VLLM_SLEEP_LEVEL="1")
    state = lab.fake_state()
    assert state["calls"] == [
        "POST /sleep?level=2&mode=wait",
        "POST /wake_up?tags=weights",
        "POST /collective_rpc",
        "POST /wake_up?tags=kv_cache",
    ]
    assert state["weights_valid"] is True
    assert lab.post("/v1/completions", {"prompt": "hi"})[0] == 200


def test_stop_level_waits_for_every_process_of_the_server(hook_lab: HookLab) -> None:
    lab = hook_lab
    lab.ok("vllm", "wake")
    server, worker = lab.pid("vllm"), worker_pid(lab)
    assert server is not None
    # The API server exits at once on SIGTERM; its engine-core worker takes a moment longer,
    # and holds the GPU memory until it has gone.
    lab.ok("vllm", "sleep", VLLM_SLEEP_LEVEL="stop", FAKE_STOP_SECS="0.5")
    assert not process_alive(worker)
    assert not process_alive(server)
    assert not lab.port_answers()
    assert lab.pid("vllm") is None
    lab.ok("vllm", "sleep", VLLM_SLEEP_LEVEL="stop")  # nothing left: fine
    assert lab.fails("vllm", "alive") == (
        f"vllm: vLLM is not healthy on port {lab.port} (/health: nothing answers)"
    )


def test_a_wake_that_times_out_is_cleaned_up_by_sleep(hook_lab: HookLab) -> None:
    lab = hook_lab
    line = lab.fails("vllm", "wake", WAKE_TIMEOUT_SECS="1", FAKE_LOAD_SECS="30")
    assert line == (
        f"vllm: timed out after 1s waiting for vLLM ({lab.model}) to answer on port {lab.port}"
    )
    server, worker = lab.pid("vllm"), worker_pid(lab)
    assert server is not None
    assert process_alive(server)  # still loading, in its own session
    # aiollmux runs the sleep hook after a failed wake: it must free what the wake started.
    lab.ok("vllm", "sleep")
    assert not process_alive(server)
    assert not process_alive(worker)


def test_a_server_that_dies_while_loading_is_reported_with_its_log(hook_lab: HookLab) -> None:
    line = hook_lab.fails("vllm", "wake", FAKE_CRASH="1")
    assert line.startswith(f"vllm: vLLM ({hook_lab.model}) exited while starting (last log line:")
    assert "error: failed to load model: out of memory" in line
    assert line.endswith(f"full log: {hook_lab.run_dir}/vllm-{hook_lab.port}.log")


def test_a_server_started_without_dev_mode_is_named_as_the_problem(hook_lab: HookLab) -> None:
    lab = hook_lab
    environment = {"VLLM_SERVER_DEV_MODE": "0"}
    lab.start_fake("vllm", "serve", "m", "--port", str(lab.port), **environment)
    assert lab.fails("vllm", "wake", VLLM_MODEL_PATH="m") == (
        f"vllm: vLLM on port {lab.port} has no /is_sleeping:"
        " start it with VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode"
    )


def test_bad_settings_and_a_missing_binary_fail_clearly(hook_lab: HookLab, tmp_path: Path) -> None:
    lab = hook_lab
    assert lab.fails("vllm", "sleep", VLLM_SLEEP_LEVEL="3") == (
        "vllm: VLLM_SLEEP_LEVEL must be 1, 2 or stop, got '3'"
    )
    missing = str(tmp_path / "no-vllm")
    assert lab.fails("vllm", "wake", VLLM_BIN=missing) == (
        f"vllm: {missing} not found on PATH"
        " (set VLLM_BIN to the vllm executable, e.g. /opt/vllm/bin/vllm)"
    )
    lab.ok("vllm", "sleep")  # nothing runs: the GPU holds nothing of it
