"""common.sh's polling and deadlines, and every starting set's proof that the server on the
port is its own (issue 11): real `sh`, real curl, fakes on real sockets."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.contrib.conftest import HOOKS, SH, HookLab


def _sourced(lab: HookLab, script: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in sh after sourcing common.sh as a hook would (BACKEND=test)."""
    program = f"BACKEND=test; . {shlex.quote(str(HOOKS / 'common.sh'))}\n{script}"
    return subprocess.run(
        [SH, "-c", program],
        env=lab.env(LLMUX_HOOK="wake", **extra),
        cwd=lab.tmp,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _wait_healthy(lab: HookLab) -> None:
    """Poll the fake's /health until it answers 200 (it loads for FAKE_LOAD_SECS first)."""
    deadline = time.monotonic() + 30
    while lab.get("/health")[0] != 200:
        assert time.monotonic() < deadline, "the fake never loaded"


@contextlib.contextmanager
def _stranger() -> Iterator[int]:
    """A live process that is no server: what a pidfile names after its pid was reused."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield process.pid
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# -- polling and deadlines ---------------------------------------------------------------


def test_polls_are_50_ms_for_a_second_then_double_up_to_poll_secs(hook_lab: HookLab) -> None:
    # A fake clock: `sleep` records its argument and moves the clock on by it; the command
    # fails 24 times.
    script = """
        echo 100000 >clock
        now_centis() { cat clock; }
        sleep() {
            echo "$1" >>pauses
            set -- "$(centis "$1")"
            echo $(($(cat clock) + $1)) >clock
        }
        tries=0
        fails_24_times() { tries=$((tries + 1)); [ "$tries" -gt 24 ]; }
        deadline 600
        wait_until "the test" fails_24_times
    """
    result = _sourced(hook_lab, script, POLL_SECS="1")
    assert result.returncode == 0, result.stderr
    pauses = (hook_lab.tmp / "pauses").read_text().split()
    assert pauses == ["0.05"] * 20 + ["0.10", "0.20", "0.40", "0.80"]
    (hook_lab.tmp / "pauses").unlink()
    assert _sourced(hook_lab, script, POLL_SECS="0.3").returncode == 0
    pauses = (hook_lab.tmp / "pauses").read_text().split()
    assert pauses == ["0.05"] * 20 + ["0.10", "0.20", "0.30", "0.30"]
    (hook_lab.tmp / "pauses").unlink()
    # Never past the deadline: the last pause is what is left of it.
    result = _sourced(hook_lab, script.replace("deadline 600", "deadline 1.12"), POLL_SECS="1")
    assert result.stderr == "test: timed out after 1.12s waiting for the test\n"
    pauses = (hook_lab.tmp / "pauses").read_text().split()
    assert pauses == ["0.05"] * 20 + ["0.10", "0.03"]  # 1.12 s and the clock's one tick


def test_the_deadline_is_kept_to_the_hundredth_and_takes_fractions(hook_lab: HookLab) -> None:
    script = 'deadline "$LIMIT"; wait_until "nothing" false'
    for limit in ("1", "0.5"):
        started = time.monotonic()
        result = _sourced(hook_lab, script, LIMIT=limit)
        elapsed = time.monotonic() - started
        assert result.stderr == f"test: timed out after {limit}s waiting for nothing\n"
        # Never before the deadline, to the hundredth /proc/uptime counts in (whole seconds
        # of `date +%s` ended it up to 1 s early).
        assert elapsed >= float(limit) - 0.011


@pytest.mark.parametrize(
    ("name", "value"),
    [("POLL_SECS", "fast"), ("STOP_GRACE_SECS", "1s"), ("REQUEST_TIMEOUT_SECS", "1.2.3")],
)
def test_a_setting_that_is_no_number_is_named(hook_lab: HookLab, name: str, value: str) -> None:
    result = _sourced(hook_lab, "true", **{name: value})
    assert result.returncode == 1
    assert result.stderr == f"test: {name} must be a number of seconds, got '{value}'\n"


# -- the server on the port must be the hooks' own --------------------------------------


def test_llamacpp_refuses_a_healthy_server_started_by_hand(hook_lab: HookLab) -> None:
    lab = hook_lab
    (lab.tmp / "m.gguf").write_bytes(b"GGUF")
    lab.start_fake("llama-server", "-m", "other.gguf", "--port", str(lab.port))
    _wait_healthy(lab)
    assert lab.fails("llamacpp", "wake", LLAMA_MODEL_PATH="m.gguf") == (
        f"llamacpp: port {lab.port} answers but no llama-server started by these hooks runs"
        f" (no live process in {lab.run_dir}/llamacpp-{lab.port}.pid): another program holds"
        " the port; stop it or give this model another port"
    )
    # Alive says so too: the daemon must not adopt that server as this model, awake.
    assert lab.fails("llamacpp", "alive").startswith(
        f"llamacpp: port {lab.port} answers but no llama-server started by these hooks runs"
    )
    # A pidfile whose process lives but does not hold the port proves nothing either.
    lab.run_dir.mkdir(exist_ok=True)
    with _stranger() as pid:
        (lab.run_dir / f"llamacpp-{lab.port}.pid").write_text(f"{pid}\n")
        assert lab.fails("llamacpp", "wake", LLAMA_MODEL_PATH="m.gguf") == (
            f"llamacpp: port {lab.port} is held by another program, not by the llama-server"
            f" these hooks started (pid {pid}): stop that program or give this model another"
            " port"
        )


def test_llamacpp_names_a_missing_model_file(hook_lab: HookLab) -> None:
    assert hook_lab.fails("llamacpp", "wake", LLAMA_MODEL_PATH="models/gone.gguf") == (
        f"llamacpp: model file not found: models/gone.gguf (LLAMA_MODEL_PATH, relative to"
        f" {hook_lab.tmp})"
    )
    assert not hook_lab.port_answers()


@pytest.mark.parametrize(
    ("backend", "start", "settings"),
    [
        ("vllm", ["serve", "other/model"], {"VLLM_SERVER_DEV_MODE": "1"}),
        ("sglang", ["-m", "sglang.launch_server", "--model-path", "other/model"], {}),
    ],
)
def test_a_service_serving_another_model_is_refused(
    hook_lab: HookLab, backend: str, start: list[str], settings: dict[str, str]
) -> None:
    lab = hook_lab
    lab.start_fake(backend, *start, "--port", str(lab.port), **settings)
    _wait_healthy(lab)
    extra = {"SGLANG_PYTHON": "python-sglang"} if backend == "sglang" else {}
    line = lab.fails(backend, "wake", **extra)
    assert line.startswith(
        f"{backend}: the server on port {lab.port} was not started by these hooks and does not"
        f" serve {lab.model} (GET /v1/models: HTTP 200 "
    )
    assert line.endswith("is another model's server on that port?")
    assert "other/model" in line
    assert lab.fails(backend, "alive", **extra) == line
    # The same service serving this model is used as it is.
    model_path = {"vllm": "VLLM_MODEL_PATH", "sglang": "SGLANG_MODEL_PATH"}[backend]
    lab.ok(backend, "wake", **extra, **{model_path: "other/model"})


def test_vllm_refuses_a_port_its_own_pidfile_process_does_not_hold(hook_lab: HookLab) -> None:
    lab = hook_lab
    lab.start_fake("vllm", "serve", lab.model, "--port", str(lab.port), VLLM_SERVER_DEV_MODE="1")
    _wait_healthy(lab)
    lab.run_dir.mkdir(exist_ok=True)
    with _stranger() as pid:
        (lab.run_dir / f"vllm-{lab.port}.pid").write_text(f"{pid}\n")
        assert lab.fails("vllm", "wake") == (
            f"vllm: port {lab.port} is held by another program, not by the vLLM these hooks"
            f" started (pid {pid}): stop that program or give this model another port"
        )
