"""The switcher on its own: real sh hooks, no HTTP."""

from __future__ import annotations

import ast
import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from aiollmux.config import ModelConfig, PolicyConfig
from aiollmux.errors import ModelNotFound, ServiceStopping, WakeFailed
from aiollmux.policy import Decision, PolicyContext
from aiollmux.switcher import MIN_RETRY_SECS, Switcher
from tests.support import Journal, two_model_switcher, wait_for


class RecordingPolicy:
    """Defers until told otherwise; records every context it was shown."""

    tick_interval: float | None = None

    def __init__(self, config: PolicyConfig) -> None:
        self.contexts: list[PolicyContext] = []
        self.answer: Decision = Decision.defer()

    def decide(self, context: PolicyContext) -> Decision:
        self.contexts.append(context)
        return self.answer


def _switcher(tmp_path: Path, policy: Any = None, **policy_options: Any) -> Switcher:
    return two_model_switcher(tmp_path, policy, **policy_options)


async def test_guard_handed_to_a_cancelled_request_is_given_back(tmp_path: Path) -> None:
    switcher = _switcher(tmp_path, RecordingPolicy(PolicyConfig()))
    switcher.start()
    try:
        task = asyncio.create_task(switcher.acquire("alpha"))
        await wait_for(lambda: switcher.queued("alpha") == 1)
        # Release the waiter and cancel its request in the same loop step: the request
        # never gets to use the guard, so it must be given back.
        switcher.adopt("alpha")  # lets the queue in
        assert switcher.in_flight("alpha") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert switcher.in_flight("alpha") == 0
        assert switcher.queued("alpha") == 0
    finally:
        await switcher.close()


async def test_policy_sees_the_queue_and_defer_waits(tmp_path: Path) -> None:
    policy = RecordingPolicy(PolicyConfig())
    switcher = _switcher(tmp_path, policy)
    switcher.start()
    try:
        task = asyncio.create_task(switcher.acquire("beta"))
        await wait_for(lambda: len(policy.contexts) >= 1)
        context = policy.contexts[-1]
        assert context.target == "beta"
        assert context.active_model is None
        assert context.queues["beta"].queued == 1
        assert context.queues["alpha"].queued == 0
        assert switcher.state() == "idle"
        policy.answer = Decision.switch("beta")
        switcher.reconsider()
        guard = await asyncio.wait_for(task, 10)
        assert switcher.active == "beta"
        guard.release()
        guard.release()  # idempotent
        assert switcher.in_flight("beta") == 0
    finally:
        await switcher.close()


async def test_defer_until_a_time_asks_again(tmp_path: Path) -> None:
    policy = RecordingPolicy(PolicyConfig())
    switcher = _switcher(tmp_path, policy)
    switcher.start()
    try:
        task = asyncio.create_task(switcher.acquire("alpha"))
        await wait_for(lambda: len(policy.contexts) >= 1)
        policy.answer = Decision.defer(until=switcher.clock() + 0.05)
        switcher.reconsider()
        await wait_for(lambda: len(policy.contexts) >= 3)  # the timer asked again
        policy.answer = Decision.switch("alpha")
        switcher.reconsider()
        (await asyncio.wait_for(task, 10)).release()
    finally:
        await switcher.close()


async def test_close_fails_queued_requests_with_503(tmp_path: Path) -> None:
    switcher = _switcher(tmp_path, RecordingPolicy(PolicyConfig()))
    switcher.start()
    task = asyncio.create_task(switcher.acquire("alpha"))
    await wait_for(lambda: switcher.queued("alpha") == 1)
    await switcher.close()
    with pytest.raises(ServiceStopping):
        await task
    with pytest.raises(ServiceStopping):
        await switcher.acquire("alpha")
    with pytest.raises(ServiceStopping):
        await switcher.switch_to("alpha")


async def test_forced_switch_and_sleep(tmp_path: Path) -> None:
    switcher = _switcher(tmp_path)
    switcher.start()
    journal = Journal(tmp_path / "journal.log")
    try:
        await switcher.switch_to("alpha")
        assert switcher.active == "alpha"
        await switcher.switch_to("alpha")  # already active: nothing runs
        await switcher.switch_to("beta")
        await switcher.switch_to(None)
        assert switcher.state() == "idle"
        await switcher.switch_to(None)  # already idle: nothing runs
        assert journal.lines() == [
            "start wake alpha", "end wake alpha",
            "start sleep alpha", "end sleep alpha", "start wake beta", "end wake beta",
            "start sleep beta", "end sleep beta",
        ]  # fmt: skip
    finally:
        await switcher.close()


async def test_forced_switch_reports_a_failed_wake(tmp_path: Path) -> None:
    switcher = _switcher(tmp_path)
    broken = ModelConfig(
        id="alpha", port=9101, wake="echo nope >&2; exit 1", sleep="true", alive="true"
    )
    switcher.put_model(broken)
    switcher.start()
    try:
        with pytest.raises(WakeFailed, match="nope"):
            await switcher.switch_to("alpha")
        assert switcher.state() == "idle"
        assert switcher.backoff_until > 0
    finally:
        await switcher.close()


async def test_model_status_names(tmp_path: Path) -> None:
    switcher = _switcher(tmp_path)
    gates = {hook: tmp_path / f"go-{hook}" for hook in ("sleep", "wake")}

    def gated(hook: Path) -> str:
        return f"while [ ! -e {hook} ]; do sleep 0.01; done"

    switcher.put_model(
        ModelConfig(id="alpha", port=9101, wake="true", sleep=gated(gates["sleep"]), alive="true")
    )
    switcher.put_model(
        ModelConfig(id="beta", port=9102, wake=gated(gates["wake"]), sleep="true", alive="true")
    )
    assert switcher.model_status("alpha") == "asleep"
    switcher.adopt("alpha")
    assert switcher.model_status("alpha") == "active"
    assert switcher.state() == "active"
    switcher.start()
    try:
        stream = await switcher.acquire("alpha")
        beta = asyncio.create_task(switcher.acquire("beta"))
        await wait_for(lambda: switcher.model_status("alpha") == "draining")
        stream.release()
        await wait_for(lambda: switcher.model_status("alpha") == "sleeping")
        gates["sleep"].touch()
        await wait_for(lambda: switcher.model_status("beta") == "waking")
        assert switcher.model_status("alpha") == "asleep"
        gates["wake"].touch()
        (await asyncio.wait_for(beta, 10)).release()
        assert switcher.model_status("beta") == "active"
    finally:
        await switcher.close()


@pytest.mark.parametrize("policy", ["fifo", "cost-aware"])
async def test_request_queued_while_another_group_takes_the_gpu_is_served(
    tmp_path: Path, policy: str
) -> None:
    # An exclusive switch elsewhere calls yield_gpu from outside this switcher's driver;
    # a request that queued for the draining model was no target then. Once the model is
    # asleep it is, and nothing else would wake the driver.
    switcher = _switcher(tmp_path, name=policy, coalesce_ms=0)
    switcher.adopt("alpha")
    switcher.start()
    try:
        working = await switcher.acquire("alpha")
        yielding = asyncio.create_task(switcher.yield_gpu())
        await wait_for(lambda: switcher.model_status("alpha") == "draining")
        waiting = asyncio.create_task(switcher.acquire("alpha"))
        await wait_for(lambda: switcher.queued("alpha") == 1)
        working.release()
        await yielding
        guard = await asyncio.wait_for(waiting, 10)  # woken again, not left waiting
        assert guard.model == "alpha"
        assert switcher.active == "alpha"
        guard.release()
    finally:
        await switcher.close()


class DeferToThePast:
    """Always defers to a time already gone."""

    tick_interval: float | None = None

    def __init__(self) -> None:
        self.asked: list[float] = []

    def decide(self, context: PolicyContext) -> Decision:
        self.asked.append(context.now)
        return Decision.defer(until=context.now - 1.0)


async def test_a_deferral_to_the_past_does_not_spin(tmp_path: Path) -> None:
    policy = DeferToThePast()
    switcher = _switcher(tmp_path, policy)
    switcher.start()
    try:
        task = asyncio.create_task(switcher.acquire("alpha"))
        await wait_for(lambda: len(policy.asked) >= 4)
        task.cancel()
        gaps = [later - earlier for earlier, later in itertools.pairwise(policy.asked)]
        assert min(gaps) >= MIN_RETRY_SECS * 0.99  # asked again, but not at once
    finally:
        await switcher.close()


class FailsOnce:
    """Raises on its first question, then switches as fifo does."""

    tick_interval: float | None = None

    def __init__(self) -> None:
        self.calls = 0

    def decide(self, context: PolicyContext) -> Decision:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in a user policy")
        return Decision.switch(context.target) if context.target else Decision.skip()


async def test_a_policy_that_raises_is_asked_again_after_the_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("aiollmux.switcher.BACKOFF_SECS", 0.05)
    policy = FailsOnce()
    switcher = _switcher(tmp_path, policy)
    switcher.start()
    try:
        guard = await asyncio.wait_for(switcher.acquire("alpha"), 10)
        assert (guard.model, policy.calls) == ("alpha", 2)
        guard.release()
        assert "a bug in a user policy" in caplog.text
    finally:
        await switcher.close()


async def test_without_drain_released_requests_start_before_the_next_sleep(
    tmp_path: Path,
) -> None:
    # drain_before_switch = false skips waiting for requests in flight, but requests let
    # out of a queue must still get under way before their model is marked draining and
    # its sleep hook starts (docs/design.md §4: the lock is held until they are in flight).
    switcher = _switcher(tmp_path, hook_delay=0.2, drain_before_switch=False)
    switcher.start()
    seen: list[tuple[str, bool, tuple[str, str] | None]] = []

    async def request(model: str) -> None:
        guard = await switcher.acquire(model)
        seen.append((model, switcher.model_status(model) == "draining", switcher.hook_running))
        guard.release()

    try:
        beta = asyncio.create_task(request("beta"))
        await wait_for(lambda: switcher.hook_running == ("beta", "wake"))
        alpha = asyncio.create_task(request("alpha"))  # queued while beta wakes
        await asyncio.gather(beta, alpha)
        assert seen == [("beta", False, None), ("alpha", False, None)]
    finally:
        await switcher.close()


async def test_an_admin_switch_to_a_model_removed_meanwhile_fails_with_404(
    tmp_path: Path,
) -> None:
    switcher = _switcher(tmp_path, hook_delay=0.2)
    switcher.start()
    try:
        first = asyncio.create_task(switcher.switch_to("alpha"))
        await wait_for(lambda: switcher.hook_running == ("alpha", "wake"))
        admin = asyncio.create_task(switcher.switch_to("beta"))  # queued behind it
        await switcher.retire("beta")  # a reload removes beta
        await first
        with pytest.raises(ModelNotFound):
            await asyncio.wait_for(admin, 10)
        assert switcher.active == "alpha"  # not put to sleep for nothing
        assert "start sleep alpha" not in Journal(tmp_path / "journal.log").lines()
    finally:
        await switcher.close()


async def test_close_fails_the_admin_switch_under_way(tmp_path: Path) -> None:
    switcher = _switcher(tmp_path, hook_delay=1.0)
    switcher.start()
    admin = asyncio.create_task(switcher.switch_to("alpha"))
    await wait_for(lambda: switcher.hook_running == ("alpha", "wake"))
    await switcher.close()
    with pytest.raises(ServiceStopping):
        await asyncio.wait_for(admin, 10)


async def test_shutdown_during_a_drain_leaves_the_model_active(tmp_path: Path) -> None:
    # So that sleep_on_shutdown still puts it to sleep: it is awake, with a stream.
    switcher = _switcher(tmp_path)
    switcher.start()
    await switcher.switch_to("alpha")
    stream = await switcher.acquire("alpha")
    beta = asyncio.create_task(switcher.acquire("beta"))
    await wait_for(lambda: switcher.model_status("alpha") == "draining")
    await switcher.close()
    assert switcher.active == "alpha"
    assert switcher.model_status("alpha") == "active"
    stream.release()
    with pytest.raises(ServiceStopping):
        await beta


async def test_an_idle_sleep_held_by_min_active_secs_is_dropped_if_a_request_came(
    tmp_path: Path,
) -> None:
    switcher = _switcher(tmp_path, min_active_secs=0.5)
    switcher.start()
    try:
        await switcher.switch_to("alpha")
        quiet_since = switcher.last_activity
        # What the health monitor's idle sleep asks for.
        sleeping = asyncio.create_task(
            switcher.switch_to(None, unless=lambda: switcher.last_activity != quiet_since)
        )
        await wait_for(lambda: switcher.switching is not None)  # waiting out min_active
        guard = await switcher.acquire("alpha")  # traffic meanwhile
        guard.release()
        await sleeping
        assert switcher.active == "alpha"
        assert "start sleep alpha" not in Journal(tmp_path / "journal.log").lines()
    finally:
        await switcher.close()


def test_nothing_outside_the_switcher_assigns_its_attributes() -> None:
    # Issue 14: commands in, read-only views out. An assignment to `<...>switcher.<attr>`
    # anywhere but in the switcher's own module is the shared state coming back.
    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [*root.joinpath("aiollmux").rglob("*.py"), *root.joinpath("tests").rglob("*.py")]:
        if path.name == "switcher.py" and path.parent.name == "aiollmux":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = (
                node.targets if isinstance(node, ast.Assign)
                else [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign)
                else []
            )  # fmt: skip
            for target in targets:
                owner = target.value if isinstance(target, ast.Attribute) else None
                if owner is not None and "switcher" in ast.unparse(owner).lower():
                    offenders.append(f"{path.relative_to(root)}:{target.lineno}")
    assert offenders == []
