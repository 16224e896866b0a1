"""The hook runner with real `sh` and real processes (docs/design.md §3).

Hooks record the pids they start (with the process's start time, so a reused pid is never
mistaken for a survivor) in files written atomically; tests read them and check /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aiollmux.config import HookName, ModelConfig
from aiollmux.hooks import CAPTURE_BYTES, HookResult, HookRunner, hook_environment
from aiollmux.metrics import Metrics
from tests.support import wait_for

# `record PID FILE`: write "pid starttime" to FILE atomically (rename), for `Proc`.
RECORD = 'record() { echo "$1 $(cut -d" " -f22 /proc/$1/stat)" > "$2.tmp" && mv "$2.tmp" "$2"; }\n'
# Started in the background without redirection: holds the hook's stdout/stderr open.
SH_AND_CHILD = RECORD + "record $$ sh.pid; sleep 1000 & record $! child.pid\n"


class Proc:
    """A process known by pid and start time; dead once gone, reused or a zombie."""

    def __init__(self, path: Path) -> None:
        pid, start = path.read_text().split()
        self.pid = int(pid)
        self.start = start

    def _stat(self) -> list[str] | None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        return stat[stat.rindex(")") + 2 :].split()

    def dead(self) -> bool:
        # A killed grandchild is reparented and may stay a zombie until its new parent
        # reaps it: a zombie runs nothing and holds nothing, so it counts as dead.
        fields = self._stat()
        return fields is None or fields[19] != self.start or fields[0] in ("Z", "X")

    def kill(self) -> None:
        if not self.dead():
            os.kill(self.pid, signal.SIGKILL)


def survivors(model_id: str) -> list[int]:
    """Live processes whose environment carries this model id: everything a hook started."""
    marker = f"LLMUX_MODEL={model_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):  # a zombie's environment reads empty
            found.append(int(entry))
    return found


def our_fds_on(pipe: str) -> list[str]:
    """Our file descriptors open on `pipe` (a `pipe:[inode]` link target)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == pipe:
                found.append(fd)
        except FileNotFoundError:
            continue
    return found


def hook_events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "aiollmux.hooks" and hasattr(r, "event")]


MakeModel = Callable[..., ModelConfig]


@pytest.fixture
def make_model() -> MakeModel:
    def make(wake: str = "true", **extra: Any) -> ModelConfig:
        settings: dict[str, Any] = {"sleep": "true", "alive": "true", "wake_timeout_secs": 30.0}
        settings.update(extra)
        return ModelConfig(id=f"m-{uuid.uuid4().hex[:12]}", port=8123, wake=wake, **settings)

    return make


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def runner(metrics: Metrics) -> AsyncIterator[HookRunner]:
    runner = HookRunner(metrics)
    try:
        yield runner
    finally:
        await runner.close()


@pytest.fixture(autouse=True)
def debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiollmux.hooks")


def sample(metrics: Metrics, name: str, model: ModelConfig, hook: HookName = "wake") -> float:
    value = metrics.registry.get_sample_value(name, {"model": model.id, "hook": hook})
    return 0.0 if value is None else value


# -- results, environment ---------------------------------------------------------------


def open_fds() -> set[tuple[str, str]]:
    """This process's descriptors with what they point at (a reused number is new)."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor
            fds.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
    return fds


async def test_exit_zero_is_ok(
    runner: HookRunner,
    make_model: MakeModel,
    metrics: Metrics,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = make_model("echo out; echo err >&2")
    await runner.run(make_model(), "wake", tmp_path)  # warm up asyncio's child watcher
    gc.collect()  # nothing left for the collector to close while we compare
    fds_before = open_fds()
    caplog.clear()

    result = await runner.run(model, "wake", tmp_path)

    assert result == HookResult(
        model=model.id,
        hook="wake",
        returncode=0,
        timed_out=False,
        duration=result.duration,
        stdout="out\n",
        stderr="err\n",
    )
    assert result.ok
    assert 0 < result.duration < 30
    assert runner.running == 0
    assert open_fds() - fds_before == set()  # both pipes closed
    assert sample(metrics, "llmux_hook_duration_seconds_count", model) == 1
    assert sample(metrics, "llmux_hook_failures_total", model) == 0
    assert sample(metrics, "llmux_hook_timeouts_total", model) == 0
    [record] = hook_events(caplog)
    assert record.event == "hook_completed"  # type: ignore[attr-defined]
    assert record.levelno == logging.INFO
    assert (record.model, record.hook, record.returncode) == (model.id, "wake", 0)  # type: ignore[attr-defined]


async def test_non_zero_exit_fails_with_the_tail_of_stderr(
    runner: HookRunner,
    make_model: MakeModel,
    metrics: Metrics,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = make_model(sleep="echo noise; seq 1 5000 >&2; echo 'GPU still busy' >&2; exit 3")

    result = await runner.run(model, "sleep", tmp_path)

    assert not result.ok
    assert (result.returncode, result.timed_out) == (3, False)
    message = result.describe()
    assert message.startswith(f"sleep hook of {model.id!r} exited with status 3: ")
    assert message.endswith("4999\n5000\nGPU still busy")
    assert "\n1\n2\n3\n" not in message  # only the tail
    assert len(message) < 1200
    assert sample(metrics, "llmux_hook_failures_total", model, "sleep") == 1
    assert sample(metrics, "llmux_hook_timeouts_total", model, "sleep") == 0
    assert sample(metrics, "llmux_hook_duration_seconds_count", model, "sleep") == 1
    [record] = [r for r in hook_events(caplog) if r.levelno >= logging.INFO]
    assert record.event == "hook_failed"  # type: ignore[attr-defined]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == message
    assert (record.model, record.hook, record.returncode) == (model.id, "sleep", 3)  # type: ignore[attr-defined]


async def test_a_hook_killed_by_a_signal_says_so(
    runner: HookRunner, make_model: MakeModel, tmp_path: Path
) -> None:
    result = await runner.run(make_model("kill -KILL $$"), "wake", tmp_path)
    assert result.returncode == -signal.SIGKILL
    assert not result.ok
    assert "was killed by signal 9" in result.describe()


async def test_a_hook_that_cannot_start_fails(
    runner: HookRunner,
    make_model: MakeModel,
    metrics: Metrics,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = make_model()
    result = await runner.run(model, "wake", tmp_path / "missing")
    assert not result.ok
    assert (result.returncode, result.timed_out) == (None, False)
    assert result.describe().startswith(f"wake hook of {model.id!r} could not be started: ")
    assert "No such file or directory" in result.describe()
    assert sample(metrics, "llmux_hook_failures_total", model) == 1
    assert [r.event for r in hook_events(caplog)] == ["hook_failed"]  # type: ignore[attr-defined]
    assert runner.running == 0


@pytest.mark.parametrize("hook", ["wake", "sleep", "alive"])
async def test_environment_cwd_and_stdin(
    runner: HookRunner,
    make_model: MakeModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    hook: HookName,
) -> None:
    monkeypatch.setenv("AIOLLMUX_TEST_INHERITED", "from the daemon")
    cwd = tmp_path / "config dir"
    cwd.mkdir()
    # `cat` would wait for ever on an open stdin; the hook timeout would then fail the test.
    command = (
        'printf "%s\\n" "$LLMUX_MODEL" "$LLMUX_PORT" "$LLMUX_HOOK" "$AIOLLMUX_TEST_INHERITED"'
        ' "$(pwd -P)" "$(cat | wc -c)"'
    )
    model = make_model(**{hook: command, f"{hook}_timeout_secs": 20.0})

    result = await runner.run(model, hook, cwd)

    assert result.ok, result.describe()
    assert result.stdout.splitlines() == [
        model.id, "8123", hook, "from the daemon", str(cwd.resolve()), "0",
    ]  # fmt: skip
    [record] = hook_events(caplog)
    assert record.event == "hook_completed"  # type: ignore[attr-defined]
    assert record.levelno == (logging.DEBUG if hook == "alive" else logging.INFO)


def test_hook_environment(make_model: MakeModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOLLMUX_TEST_INHERITED", "yes")
    monkeypatch.setenv("PATH", "")
    model = make_model()
    env = hook_environment(model, "alive")
    assert (env["LLMUX_MODEL"], env["LLMUX_PORT"], env["LLMUX_HOOK"]) == (model.id, "8123", "alive")
    assert env["AIOLLMUX_TEST_INHERITED"] == "yes"
    # The running installation's bin directory is on PATH, so hooks find `aiollmux`.
    bin_dir = str(Path(sys.executable).parent)
    assert env["PATH"] == bin_dir
    monkeypatch.setenv("PATH", "/usr/bin")
    assert hook_environment(model, "wake")["PATH"] == f"/usr/bin{os.pathsep}{bin_dir}"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin")
    assert hook_environment(model, "wake")["PATH"] == f"{bin_dir}{os.pathsep}/usr/bin"


async def test_model_id_reaches_the_hook_only_through_the_environment(
    runner: HookRunner, tmp_path: Path
) -> None:
    model_id = "\"; touch pwned # $(touch pwned2) `touch pwned3` 'x' & touch pwned4"
    model = ModelConfig(
        id=model_id, port=8001, wake='echo "$LLMUX_MODEL" > out', sleep="true", alive="true"
    )

    result = await runner.run(model, "wake", tmp_path)

    assert result.ok, result.describe()
    assert (tmp_path / "out").read_text() == model_id + "\n"
    assert os.listdir(tmp_path) == ["out"]


# -- a hook is done when its own process exits ------------------------------------------


async def test_background_child_holding_the_pipes_does_not_hang_the_hook(
    runner: HookRunner, make_model: MakeModel, tmp_path: Path
) -> None:
    # The classic `vllm serve … &` wake hook: the server inherits stdout/stderr.
    model = make_model(
        "echo before; echo warming >&2;"
        + SH_AND_CHILD
        + "while [ ! -e go ]; do sleep 0.01; done; echo after"
    )
    run = asyncio.create_task(runner.run(model, "wake", tmp_path))
    child: Proc | None = None
    try:
        # Once the runner counts it as running, run() is waiting for the process to exit.
        await wait_for(lambda: runner.running == 1 and (tmp_path / "child.pid").exists())
        child = Proc(tmp_path / "child.pid")
        (tmp_path / "go").touch()
        async with asyncio.timeout(20):  # the wake timeout (30 s) would be a hang
            result = await run

        assert result.ok, result.describe()
        assert (result.stdout, result.stderr) == ("before\nafter\n", "warming\n")
        assert not child.dead()  # the "server" runs on, still holding the pipe
        pipe = os.readlink(f"/proc/{child.pid}/fd/1")
        assert pipe.startswith("pipe:")
        assert len(our_fds_on(pipe)) == 1  # drained in the background

        await runner.close()

        assert our_fds_on(pipe) == []  # close() stopped the drain...
        assert not child.dead()  # ...but a finished hook's server is not the runner's to kill
    finally:
        run.cancel()
        if child is not None:
            child.kill()


async def test_background_output_is_drained_until_the_child_exits(
    runner: HookRunner, make_model: MakeModel, tmp_path: Path
) -> None:
    # 2 MB after the hook exited: far more than a pipe holds, so it needs a reader.
    model = make_model(
        RECORD + "sh -c 'while [ ! -e go ]; do sleep 0.01; done; seq 1 300000; echo done > done'"
        " & record $! holder.pid; echo started"
    )
    result = await runner.run(model, "wake", tmp_path)
    assert result.ok
    assert result.stdout == "started\n"
    holder = Proc(tmp_path / "holder.pid")
    pipe = os.readlink(f"/proc/{holder.pid}/fd/1")
    assert len(our_fds_on(pipe)) == 1

    (tmp_path / "go").touch()

    await wait_for(lambda: (tmp_path / "done").exists())
    await wait_for(lambda: our_fds_on(pipe) == [])  # EOF ended the drain by itself
    await wait_for(lambda: holder.dead())
    await wait_for(lambda: survivors(model.id) == [])


async def test_a_background_child_that_never_stops_writing_does_not_hold_up_the_hook(
    runner: HookRunner, make_model: MakeModel, tmp_path: Path
) -> None:
    model = make_model(RECORD + "yes & record $! child.pid; echo started >&2")
    child: Proc | None = None
    try:
        async with asyncio.timeout(20):
            result = await runner.run(model, "wake", tmp_path)
        child = Proc(tmp_path / "child.pid")
        assert result.ok
        assert result.stderr == "started\n"
        assert set(result.stdout) <= {"y", "\n"}
        assert len(result.stdout) <= CAPTURE_BYTES
        assert not child.dead()
    finally:
        if child is not None:
            child.kill()


async def test_after_close_leftover_pipes_are_not_drained(
    runner: HookRunner, make_model: MakeModel, tmp_path: Path
) -> None:
    await runner.close()
    model = make_model(SH_AND_CHILD + "echo started")
    result = await runner.run(model, "wake", tmp_path)
    child = Proc(tmp_path / "child.pid")
    try:
        assert result.ok
        assert result.stdout == "started\n"
        assert our_fds_on(os.readlink(f"/proc/{child.pid}/fd/1")) == []
    finally:
        child.kill()


# -- timeouts ---------------------------------------------------------------------------


async def test_timeout_kills_the_whole_group(
    runner: HookRunner,
    make_model: MakeModel,
    metrics: Metrics,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = make_model(SH_AND_CHILD + "echo 'still loading' >&2; wait", wake_timeout_secs=1.0)

    result = await runner.run(model, "wake", tmp_path)

    sh, child = Proc(tmp_path / "sh.pid"), Proc(tmp_path / "child.pid")
    assert sh.dead()
    assert child.dead()
    assert survivors(model.id) == []
    assert result.timed_out
    assert not result.ok
    assert result.returncode == -signal.SIGTERM  # the default grace sufficed
    assert result.duration >= 1.0
    assert result.describe().startswith(f"wake hook of {model.id!r} timed out after ")
    assert result.describe().endswith(": still loading")
    assert runner.running == 0
    assert sample(metrics, "llmux_hook_timeouts_total", model) == 1
    assert sample(metrics, "llmux_hook_failures_total", model) == 1
    assert sample(metrics, "llmux_hook_duration_seconds_count", model) == 1
    assert sample(metrics, "llmux_hook_duration_seconds_sum", model) >= 1.0
    [record] = hook_events(caplog)
    assert record.event == "hook_timeout"  # type: ignore[attr-defined]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == result.describe()


async def test_a_group_ignoring_sigterm_is_killed_after_the_grace(
    make_model: MakeModel, tmp_path: Path
) -> None:
    runner = HookRunner(kill_grace=0.2)
    ignore_term = "trap '' TERM\n"
    model = make_model(
        ignore_term + SH_AND_CHILD + "grep SigIgn /proc/$!/status > child.ignored; wait",
        wake_timeout_secs=1.0,
    )
    try:
        result = await runner.run(model, "wake", tmp_path)
    finally:
        await runner.close()

    ignored = int((tmp_path / "child.ignored").read_text().split()[1], 16)
    assert ignored & (1 << (signal.SIGTERM - 1))  # the child really ignored SIGTERM
    assert Proc(tmp_path / "sh.pid").dead()
    assert Proc(tmp_path / "child.pid").dead()
    assert survivors(model.id) == []
    assert result.timed_out
    assert result.returncode == -signal.SIGKILL
    assert result.duration >= 1.0 + 0.2


async def test_after_sigterm_the_whole_group_gets_the_grace_period(
    make_model: MakeModel, tmp_path: Path
) -> None:
    # The leader dies at SIGTERM at once; its child cleans up first. It must not be
    # SIGKILLed just because the leader is gone.
    runner = HookRunner(kill_grace=30)
    cleanup = "echo cleaning > cleanup.log; sleep 0.3; echo done >> cleanup.log; exit 0"
    # It does not hold the hook's pipes: the runner must watch the group, not the pipes.
    child = f"sh -c 'trap \"{cleanup}\" TERM; sleep 1000 & wait' >/dev/null 2>&1"
    model = make_model(
        RECORD + child + " & record $! child.pid; wait",
        wake_timeout_secs=1.0,
    )
    try:
        result = await runner.run(model, "wake", tmp_path)
    finally:
        await runner.close()

    assert result.timed_out
    assert result.returncode == -signal.SIGTERM
    assert (tmp_path / "cleanup.log").read_text() == "cleaning\ndone\n"
    assert Proc(tmp_path / "child.pid").dead()
    assert survivors(model.id) == []
    assert result.duration < 30  # it did not sit out the grace once the group was gone


# -- bounded capture --------------------------------------------------------------------


async def test_capture_keeps_only_the_tail(
    runner: HookRunner, make_model: MakeModel, tmp_path: Path
) -> None:
    model = make_model("seq 1 600000; seq 1 500000 >&2")  # ~4.5 MB and ~3.9 MB

    result = await runner.run(model, "wake", tmp_path)

    assert result.ok
    out = "".join(f"{i}\n" for i in range(1, 600001))
    err = "".join(f"{i}\n" for i in range(1, 500001))
    assert len(out) > 4_000_000
    assert result.stdout == out[-CAPTURE_BYTES:]
    assert result.stderr == err[-CAPTURE_BYTES:]


# -- cancellation and close() -----------------------------------------------------------


async def test_cancelling_a_run_kills_the_hooks_group(
    runner: HookRunner, make_model: MakeModel, tmp_path: Path
) -> None:
    model = make_model(SH_AND_CHILD + "wait")
    run = asyncio.create_task(runner.run(model, "wake", tmp_path))
    await wait_for(lambda: runner.running == 1 and (tmp_path / "child.pid").exists())
    sh, child = Proc(tmp_path / "sh.pid"), Proc(tmp_path / "child.pid")
    assert not sh.dead()
    assert not child.dead()

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert sh.dead()
    assert child.dead()
    assert survivors(model.id) == []
    assert runner.running == 0


async def test_cancelling_a_run_while_it_spawns_kills_what_it_spawned(
    runner: HookRunner, make_model: MakeModel, tmp_path: Path
) -> None:
    model = make_model("sleep 1000 & sleep 1000")
    run = asyncio.create_task(runner.run(model, "wake", tmp_path))
    await asyncio.sleep(0)  # let run() start: it now waits for the process to be spawned
    assert not run.done()

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert survivors(model.id) == []
    assert runner.running == 0


async def test_close_kills_running_hooks(
    runner: HookRunner,
    make_model: MakeModel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    models = [make_model(SH_AND_CHILD + "wait"), make_model(sleep=SH_AND_CHILD + "wait")]
    dirs = [tmp_path / "a", tmp_path / "b"]
    for path in dirs:
        path.mkdir()
    runs = [
        asyncio.create_task(runner.run(models[0], "wake", dirs[0])),
        asyncio.create_task(runner.run(models[1], "sleep", dirs[1])),
    ]
    await wait_for(lambda: runner.running == 2 and all((d / "child.pid").exists() for d in dirs))
    procs = [Proc(d / name) for d in dirs for name in ("sh.pid", "child.pid")]
    assert not any(proc.dead() for proc in procs)

    await runner.close()

    assert all(proc.dead() for proc in procs)
    assert survivors(models[0].id) == survivors(models[1].id) == []
    results = await asyncio.gather(*runs)
    assert [r.returncode for r in results] == [-signal.SIGKILL, -signal.SIGKILL]
    assert not any(r.ok or r.timed_out for r in results)
    assert "was killed by signal 9" in results[0].describe()
    assert runner.running == 0
    assert sorted(r.event for r in hook_events(caplog)) == ["hook_failed", "hook_failed"]  # type: ignore[attr-defined]


async def test_kill_all_kills_running_hooks_at_once(
    runner: HookRunner, make_model: MakeModel, tmp_path: Path
) -> None:
    model = make_model(SH_AND_CHILD + "wait")
    run = asyncio.create_task(runner.run(model, "wake", tmp_path))
    await wait_for(lambda: runner.running == 1 and (tmp_path / "child.pid").exists())
    sh, child = Proc(tmp_path / "sh.pid"), Proc(tmp_path / "child.pid")

    runner.kill_all()  # synchronous: the daemon calls it right before os._exit()

    result = await run
    assert result.returncode == -signal.SIGKILL
    assert sh.dead()
    # Nothing waits for the reparented child here; it has been sent SIGKILL all the same.
    await wait_for(child.dead)
    assert survivors(model.id) == []


async def test_close_with_nothing_running(runner: HookRunner) -> None:
    await runner.close()
    assert runner.running == 0
