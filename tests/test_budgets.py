"""A group with a memory budget (docs/design.md §8) on its own: real sh hooks, no HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from aiollmux.config import GroupConfig, PolicyConfig
from aiollmux.errors import WakeFailed
from aiollmux.metrics import Metrics
from aiollmux.policy import Policy, load_policy
from aiollmux.switch_costs import SwitchCosts
from aiollmux.switcher import Switcher
from tests.support import Journal, budget_switcher, hook_commands, wait_for

SIZES = {"a": 4.0, "b": 4.0, "c": 6.0, "d": 8.0}


def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.log")


async def use(switcher: Switcher, model: str) -> None:
    """One request on `model`, started and ended (it becomes the most recently used)."""
    (await asyncio.wait_for(switcher.acquire(model), 10)).release()


async def test_a_member_that_fits_is_woken_without_putting_anything_to_sleep(
    tmp_path: Path,
) -> None:
    switcher = budget_switcher(tmp_path, SIZES, 12)
    switcher.start()
    try:
        await use(switcher, "a")
        await use(switcher, "b")
        assert list(switcher.awake) == ["a", "b"]
        assert switcher.memory_used_gb() == 8.0
        assert journal(tmp_path).events("start") == ["start wake a", "start wake b"]
        assert switcher.snapshot().state == "active"
    finally:
        await switcher.close()


async def test_the_least_recently_used_members_go_and_only_as_many_as_needed(
    tmp_path: Path,
) -> None:
    switcher = budget_switcher(tmp_path, {"a": 4, "b": 4, "c": 4, "e": 4, "d": 8}, 12)
    switcher.start()
    try:
        for model in ("a", "b", "c"):
            await use(switcher, model)
        await use(switcher, "a")  # b is now the least recently used, then c
        await use(switcher, "e")  # 4 more: only b makes room
        assert list(switcher.awake) == ["a", "c", "e"]
        await use(switcher, "a")
        await use(switcher, "d")  # 8 more: c then e, never a
        assert list(switcher.awake) == ["a", "d"]
        starts = journal(tmp_path).events("start")
        assert starts[3:] == [
            "start sleep b", "start wake e", "start sleep c", "start sleep e", "start wake d",
        ]  # fmt: skip
        journal(tmp_path).assert_no_overlap()
    finally:
        await switcher.close()


async def test_idle_members_are_put_to_sleep_before_busy_ones(tmp_path: Path) -> None:
    switcher = budget_switcher(tmp_path, {"a": 4, "b": 4, "d": 8}, 12)
    switcher.start()
    try:
        await use(switcher, "a")
        await use(switcher, "b")
        streaming = await switcher.acquire("a")  # a is the least recently used, but busy
        await use(switcher, "b")
        await use(switcher, "d")  # needs 4: b is idle, so b goes although a is older
        assert list(switcher.awake) == ["a", "d"]
        streaming.release()
    finally:
        await switcher.close()


async def test_an_awake_member_is_served_while_another_member_wakes(tmp_path: Path) -> None:
    go = tmp_path / "go"
    gated = {"wake": f"while [ ! -e {go} ]; do sleep 0.01; done"}
    switcher = budget_switcher(tmp_path, {"a": 4, "b": 4}, 12, hooks={"b": gated})
    switcher.start()
    try:
        await use(switcher, "a")
        waking = asyncio.create_task(switcher.acquire("b"))
        await wait_for(lambda: switcher.model_status("b") == "waking")
        assert switcher.memory_used_gb() == 8.0  # b counts from the start of its wake
        guard = switcher.try_admit("a")  # the fast path, not a queue
        assert guard is not None
        guard.release()
        assert switcher.model_status("b") == "waking"
        go.touch()
        (await asyncio.wait_for(waking, 10)).release()
        assert list(switcher.awake) == ["a", "b"]
    finally:
        await switcher.close()


async def test_a_victim_is_drained_before_its_sleep_and_the_target_waits(tmp_path: Path) -> None:
    switcher = budget_switcher(tmp_path, {"a": 8, "d": 8}, 12)
    switcher.start()
    try:
        stream = await switcher.acquire("a")
        target = asyncio.create_task(switcher.acquire("d"))
        await wait_for(lambda: switcher.model_status("a") == "draining")
        assert switcher.try_admit("a") is None  # a draining victim takes no new request
        assert "start sleep a" not in journal(tmp_path).lines()
        stream.release()
        (await asyncio.wait_for(target, 10)).release()
        assert journal(tmp_path).events("start") == [
            "start wake a", "start sleep a", "start wake d",
        ]  # fmt: skip
    finally:
        await switcher.close()


async def test_the_free_memory_probe_waits_until_the_gpu_reports_enough(tmp_path: Path) -> None:
    reading = tmp_path / "free"
    reading.write_text("1.5\n")
    probe = f'echo "$LLMUX_GROUP" >> {tmp_path}/groups; cat {reading}'
    switcher = budget_switcher(tmp_path, {"a": 4}, 12, free_memory=probe)
    switcher.start()
    try:
        task = asyncio.create_task(switcher.acquire("a"))
        await wait_for(lambda: (tmp_path / "groups").exists())
        await wait_for(lambda: len((tmp_path / "groups").read_text().split()) >= 2)  # re-run
        assert journal(tmp_path).lines() == []  # no wake before the memory is free
        reading.write_text("4.0\n")
        (await asyncio.wait_for(task, 10)).release()
        assert journal(tmp_path).events("start") == ["start wake a"]
        assert set((tmp_path / "groups").read_text().split()) == {"default"}
    finally:
        await switcher.close()


async def test_a_probe_that_never_reports_enough_fails_the_wake_without_hooks(
    tmp_path: Path,
) -> None:
    switcher = budget_switcher(
        tmp_path, {"a": 4}, 12, free_memory="echo 2.25", free_memory_timeout_secs=0.6
    )
    switcher.start()
    try:
        with pytest.raises(WakeFailed, match=r"4 GiB needed, 2\.25 GiB free after 0\.6s"):
            await asyncio.wait_for(switcher.acquire("a"), 10)
        assert journal(tmp_path).lines() == []  # neither the wake nor a clean-up sleep ran
        assert switcher.backoff_until > 0
        assert switcher.memory_used_gb() == 0.0
    finally:
        await switcher.close()


async def test_a_lowered_budget_puts_members_to_sleep_until_the_group_fits(
    tmp_path: Path,
) -> None:
    switcher = budget_switcher(tmp_path, SIZES, 12)
    switcher.start()
    try:
        await use(switcher, "a")
        await use(switcher, "b")
        await use(switcher, "a")  # b is the least recently used
        switcher.configure(
            policy_config=switcher.policy_config,
            policy=_fifo(),
            base_dir=tmp_path,
            settings=GroupConfig(name="default", memory_gb=6),
        )
        await wait_for(lambda: list(switcher.awake) == ["a"])
        assert journal(tmp_path).events("start")[-1] == "start sleep b"
    finally:
        await switcher.close()


async def test_a_raised_member_size_puts_members_to_sleep(tmp_path: Path) -> None:
    switcher = budget_switcher(tmp_path, {"a": 4, "b": 4}, 12)
    switcher.start()
    try:
        await use(switcher, "b")
        await use(switcher, "a")
        switcher.put_model(dataclasses.replace(switcher.model_config("a"), memory_gb=10))
        await wait_for(lambda: list(switcher.awake) == ["a"])  # b (LRU) made room
    finally:
        await switcher.close()


async def test_without_its_budget_a_group_keeps_only_the_latest_member(tmp_path: Path) -> None:
    switcher = budget_switcher(tmp_path, SIZES, 12)
    switcher.start()
    try:
        await use(switcher, "b")
        await use(switcher, "a")
        switcher.configure(
            policy_config=switcher.policy_config,
            policy=_fifo(),
            base_dir=tmp_path,
            settings=GroupConfig(name="default"),
        )
        await wait_for(lambda: list(switcher.awake) == ["a"])
        await use(switcher, "b")  # one at a time from now on
        assert list(switcher.awake) == ["b"]
    finally:
        await switcher.close()


async def test_putting_one_member_to_sleep_leaves_the_others_awake(tmp_path: Path) -> None:
    switcher = budget_switcher(tmp_path, SIZES, 12)
    switcher.start()
    try:
        await use(switcher, "a")
        await use(switcher, "b")
        await switcher.put_to_sleep("a")
        assert list(switcher.awake) == ["b"]
        await switcher.put_to_sleep("a")  # asleep already: nothing runs
        assert journal(tmp_path).count("start sleep a") == 1
        await switcher.switch_to(None)
        assert list(switcher.awake) == []
    finally:
        await switcher.close()


async def test_a_lost_member_frees_its_memory_and_the_others_stay(tmp_path: Path) -> None:
    switcher = budget_switcher(tmp_path, SIZES, 12)
    switcher.start()
    try:
        await use(switcher, "a")
        await use(switcher, "b")
        stream = await switcher.acquire("b")  # busy elsewhere does not block the loss of a
        assert switcher.mark_lost("a")
        assert list(switcher.awake) == ["b"]
        assert switcher.memory_used_gb() == 4.0
        assert not switcher.mark_lost("b")  # in flight: not lost while it answers
        stream.release()
    finally:
        await switcher.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_switch_cost_leaves_out_the_drain(tmp_path: Path) -> None:
    # docs/design.md §5: the EMA sample is the time the GPU was unavailable (sleep + wake hooks),
    # not the wait for the old model's streams; that is the drain histogram's.
    clock = FakeClock()
    costs, metrics = SwitchCosts(), Metrics()
    switcher = budget_switcher(
        tmp_path, {"a": 8, "b": 8}, None, clock=clock, costs=costs, metrics=metrics
    )
    switcher.start()
    try:
        stream = await switcher.acquire("a")
        target = asyncio.create_task(switcher.acquire("b"))
        await wait_for(lambda: switcher.model_status("a") == "draining")
        clock.now += 100.0  # a long drain
        stream.release()
        (await asyncio.wait_for(target, 10)).release()
        estimate = costs.estimate("a", "b")
        assert estimate is not None
        assert estimate < 1.0  # the fake clock moved only during the drain
        rendered = metrics.render().decode()
        drain = 'llmux_switch_drain_duration_seconds_sum{from="a",to="b"} 100.0'
        assert drain in rendered
        assert 'llmux_switch_duration_seconds_sum{from="a",to="b"} 0.0' in rendered
    finally:
        await switcher.close()


def _fifo() -> Policy:
    return load_policy(PolicyConfig())


async def test_a_victim_marked_lost_before_its_turn_is_skipped(tmp_path: Path) -> None:
    # A and B must both go for C; B dies (the health monitor marks it lost) while A's sleep
    # hook runs. The switch used to raise KeyError('B') and abort.
    (tmp_path / "state").mkdir()
    slow = hook_commands(tmp_path / "journal.log", tmp_path / "state", delay=0.5)
    switcher = budget_switcher(
        tmp_path, {"A": 4, "B": 4, "C": 8}, 8, hooks={"A": {"sleep": slow["sleep"]}}
    )
    switcher.start()
    try:
        switcher.adopt("A")
        switcher.adopt("B")
        switching = asyncio.create_task(switcher.switch_to("C"))
        await wait_for(lambda: switcher.hook_running == ("A", "sleep"))
        assert switcher.mark_lost("B")
        async with asyncio.timeout(10):
            await switching
        assert switcher.awake == ("C",)
        assert Journal(tmp_path / "journal.log").count("start sleep B") == 0  # lost: no hook
    finally:
        await switcher.close()
