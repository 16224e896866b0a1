"""GPU groups (docs/design.md §8): parallel switchers, exclusive and persistent groups."""

from __future__ import annotations

import asyncio

import pytest

from aiollmux.config import load_config
from aiollmux.multiplexer import Multiplexer
from tests.support import Lab, running_daemon, wait_for

GROUPS = """
[groups.big]
exclusive = true
[groups.embed]
persistent = true
[groups.side]
"""


def _per_model() -> dict[str, dict[str, object]]:
    return {"huge": {"group": "big"}, "embedder": {"group": "embed"}, "helper": {"group": "side"}}


async def test_groups_switch_independently(lab: Lab) -> None:
    await lab.add_backends("chat", "helper")
    config = lab.config(policy="[groups.side]\n", per_model={"helper": {"group": "side"}})
    async with running_daemon(config) as daemon:
        results = await asyncio.gather(daemon.chat("chat"), daemon.chat("helper"))
        for response, model in zip(results, ("chat", "helper"), strict=True):
            async with response:
                assert (await response.json())["model"] == model
        status = await daemon.status()
        assert status["groups"]["default"]["active_model"] == "chat"
        assert status["groups"]["side"]["active_model"] == "helper"
        assert status["models"]["helper"]["group"] == "side"
        assert "start sleep" not in " ".join(lab.journal.lines())  # nobody had to yield
    assert lab.violations() == []


async def test_exclusive_switch_clears_other_groups_but_not_persistent(lab: Lab) -> None:
    await lab.add_backends("chat", "helper", "embedder", "huge")
    config = lab.config(policy=GROUPS, per_model=_per_model())
    async with running_daemon(config) as daemon:
        for model in ("chat", "helper", "embedder"):
            async with await daemon.chat(model) as response:
                assert response.status == 200
        async with await daemon.chat("huge") as response:
            assert (await response.json())["model"] == "huge"
        lines = lab.journal.lines()
        wake_huge = lines.index("start wake huge")
        # Every non-persistent group's model was put to sleep before the exclusive wake.
        assert lines.index("end sleep chat") < wake_huge
        assert lines.index("end sleep helper") < wake_huge
        assert "start sleep embedder" not in lines
        status = await daemon.status()
        assert status["groups"]["default"]["active_model"] is None
        assert status["groups"]["embed"]["active_model"] == "embedder"
        # A non-exclusive group's switch does not sleep the exclusive group's model.
        async with await daemon.chat("chat") as response:
            assert (await response.json())["model"] == "chat"
        assert "start sleep huge" not in lab.journal.lines()
        assert (await daemon.status())["groups"]["big"]["active_model"] == "huge"
    assert lab.violations() == []


async def test_concurrent_exclusive_groups_do_not_deadlock(lab: Lab) -> None:
    await lab.add_backends("one", "two", "chat")
    groups = "[groups.a]\nexclusive = true\n[groups.b]\nexclusive = true\n"
    config = lab.config(
        policy=groups, per_model={"one": {"group": "a"}, "two": {"group": "b"}}, hook_delay=0.05
    )
    async with running_daemon(config) as daemon:
        models = ["one", "two", "chat"] * 6
        responses = await asyncio.wait_for(
            asyncio.gather(*(daemon.chat(m) for m in models)), timeout=30
        )
        for response, model in zip(responses, models, strict=True):
            async with response:
                assert (await response.json())["model"] == model
    assert lab.violations() == []


@pytest.mark.parametrize("group_exists", [True, False], ids=["to-a-group", "to-a-new-group"])
async def test_an_active_model_moved_to_another_group_is_slept_before_woken_there(
    lab: Lab, group_exists: bool
) -> None:
    # The old group drains and sleeps it; only then may the new group wake it (before the
    # fix, the new group woke it at once and the old group's sleep hook then stopped it
    # under the new group's requests).
    await lab.add_backends("a", "b")
    path = lab.tmp / "llmux.toml"
    text = lab.config_text(policy="[groups.g2]\n" if group_exists else "")
    path.write_text(text)
    async with running_daemon(load_config(path)) as daemon:
        stream = await daemon.chat("a", stream=True, chunks=2, gate="g")
        await stream.content.readuntil(b"\n\n")
        moved = lab.config_text(policy="[groups.g2]\n", per_model={"a": {"group": "g2"}})
        path.write_text(moved.replace(_port_line(moved), _port_line(text)))
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            assert (await response.json())["status"] == "applied"
        waiting = asyncio.create_task(daemon.chat("a"))
        await wait_for(lambda: daemon.mux.switchers["g2"].queued("a") == 1)
        assert lab.journal.lines() == ["start wake a", "end wake a"]  # not woken again yet
        lab.backends["a"].open_gate("g", 1)
        assert (await stream.content.read()).endswith(b"data: [DONE]\n\n")
        stream.close()
        async with await waiting as response:
            assert (await response.json())["model"] == "a"
        assert lab.journal.lines()[2:] == [
            "start sleep a",
            "end sleep a",
            "start wake a",
            "end wake a",
        ]
        assert (await daemon.status())["groups"]["g2"]["active_model"] == "a"
    assert lab.violations() == []


def _port_line(text: str) -> str:
    [line] = [line for line in text.splitlines() if line.startswith("port = ")][:1]
    return line


async def test_a_model_moved_out_of_an_exclusive_group_mid_switch_deadlocks_nothing(
    lab: Lab,
) -> None:
    # O (exclusive) drains X to wake Y; a reload moves X to N and a request for X comes.
    # N's switch used to wait for X's arrival holding N's lock, while O's switch, at
    # clearing the other groups, waited for that lock: neither group switched again.
    groups = "request_timeout_secs = 20\n[groups.O]\nexclusive = true\n[groups.N]\n"
    await lab.add_backends("X", "Y", "Z")
    before = lab.config(
        policy=groups, per_model={"X": {"group": "O"}, "Y": {"group": "O"}, "Z": {"group": "N"}}
    )
    after = lab.config(
        policy=groups, per_model={"X": {"group": "N"}, "Y": {"group": "O"}, "Z": {"group": "N"}}
    )
    mux = Multiplexer(before)
    mux.start()
    try:
        held = await mux.acquire(mux.resolve("X"))  # X awake in O, a request in flight
        wake_y = asyncio.create_task(mux.acquire(mux.resolve("Y")))
        await wait_for(lambda: mux.switchers["O"].model_status("X") == "draining")
        mux.apply(after)
        wake_x = asyncio.create_task(mux.acquire(mux.resolve("X")))
        await wait_for(lambda: mux.switchers["N"].queued("X") == 1)
        held.release()  # O's drain of X ends: O sleeps X, then clears N and wakes Y
        async with asyncio.timeout(15):
            guard_y = await wake_y
            guard_y.release()
            guard_x = await wake_x  # N wakes X once O has put it to sleep...
            guard_x.release()
            guard_z = await mux.acquire(mux.resolve("Z"))  # ...and N switches again
            guard_z.release()
    finally:
        await mux.close()


async def test_errors_of_the_admin_routes_come_from_the_one_error_table(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        url = f"{daemon.url}/admin/sleep"
        async with daemon.client.post(url, json={"group": "nope"}) as response:
            assert response.status == 400
            error = (await response.json())["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_request")
        assert "nope" in error["message"]
        assert "default" in error["message"]
        # An aiohttp HTTPException (the status page's 404) is shaped by the same module.
        async with daemon.client.get(f"{daemon.url}/ui/nope.js") as response:
            assert response.status == 404
            error = (await response.json())["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "not_found")
