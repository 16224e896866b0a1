"""Memory budgets through the daemon (docs/design.md §8): several members awake in one group."""

from __future__ import annotations

import asyncio

from aiollmux.config import load_config
from aiollmux.tools.admin_client import render_status
from tests.e2e.test_admin_cli import _cli
from tests.support import Lab, gated_wake, hook_commands, running_daemon, wait_for

BUDGET = "\n[groups.default]\nmemory_gb = 12\n"
SIZES = {"chat": {"memory_gb": 8}, "embed": {"memory_gb": 1}, "coder": {"memory_gb": 6}}


async def test_an_awake_member_answers_while_another_member_wakes(lab: Lab) -> None:
    await lab.add_backends("chat", "embed")
    go, hook = gated_wake(lab.tmp, lab.state_dir, "embed")
    config = lab.config(policy=BUDGET, per_model=SIZES, hooks={"embed": {"wake": hook}})
    async with running_daemon(config) as daemon:
        async with await daemon.chat("chat") as response:
            assert response.status == 200
        waking = asyncio.create_task(daemon.chat("embed"))
        await wait_for(lambda: daemon.mux.switchers["default"].model_status("embed") == "waking")
        async with await daemon.chat("chat") as response:  # not held up by the wake
            assert (await response.json())["model"] == "chat"
        status = await daemon.status()
        group = status["groups"]["default"]
        assert (group["memory_gb"], group["memory_used_gb"]) == (12, 9)  # embed counts
        assert group["active_models"] == ["chat"]
        go.touch()
        async with await waking as response:
            assert (await response.json())["model"] == "embed"
        status = await daemon.status()
        group = status["groups"]["default"]
        assert (group["state"], group["active_model"]) == ("active", "embed")
        assert group["active_models"] == ["chat", "embed"]
        assert status["models"]["chat"]["state"] == "active"
        assert status["models"]["embed"]["memory_gb"] == 1
        metrics = await daemon.metrics()
        assert 'llmux_active_model{model="chat"} 1.0' in metrics
        assert 'llmux_active_model{model="embed"} 1.0' in metrics
        assert 'llmux_group_memory_budget_gb{group="default"} 12.0' in metrics
        assert 'llmux_group_memory_used_gb{group="default"} 9.0' in metrics
        assert 'llmux_switch_total{from="idle",result="success",to="embed"} 1.0' in metrics
        assert "start sleep" not in " ".join(lab.journal.lines())
    assert lab.violations() == []


async def test_waking_a_member_that_does_not_fit_evicts_the_least_recently_used(
    lab: Lab,
) -> None:
    await lab.add_backends("chat", "embed", "coder")
    async with running_daemon(lab.config(policy=BUDGET, per_model=SIZES)) as daemon:
        for model in ("chat", "embed", "coder"):  # coder (6) needs chat's 8 GB
            async with await daemon.chat(model) as response:
                assert (await response.json())["model"] == model
        lines = lab.journal.lines()
        assert lines.index("end sleep chat") < lines.index("start wake coder")
        assert "start sleep embed" not in lines
        status = await daemon.status()
        assert status["groups"]["default"]["active_models"] == ["embed", "coder"]
        assert status["groups"]["default"]["memory_used_gb"] == 7
        metrics = await daemon.metrics()
        assert 'llmux_switch_total{from="chat",result="success",to="coder"} 1.0' in metrics
        assert 'llmux_active_model{model="chat"} 0.0' in metrics
        table = render_status(status).splitlines()
        assert "  memory: 7 of 12 GB used (awake: embed, coder)" in table
        [header] = [line for line in table if line.startswith("MODEL")]
        assert header.split()[-1] == "MEMORY"
        [row] = [line for line in table if line.startswith("coder")]
        assert row.split()[1] == "active"
        assert row.endswith("6 GB")
    lab.journal.assert_no_overlap()
    assert lab.violations() == []


async def test_admin_sleep_of_one_model_leaves_the_others_awake(lab: Lab) -> None:
    await lab.add_backends("chat", "embed")
    async with running_daemon(lab.config(policy=BUDGET, per_model=SIZES)) as daemon:
        for model in ("chat", "embed"):
            async with await daemon.chat(model) as response:
                assert response.status == 200
        url = f"{daemon.url}/admin/sleep"
        async with daemon.client.post(url, json={"model": "chat"}) as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok", "model": "chat", "state": "asleep"}
        assert (await daemon.status())["groups"]["default"]["active_models"] == ["embed"]
        async with daemon.client.post(url, json={"model": "nope"}) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "model_not_found"
        both = {"model": "embed", "group": "default"}
        async with daemon.client.post(url, json=both) as response:
            assert response.status == 400
        code, out, err = await _cli("sleep", "--model", "embed", "--url", daemon.url)
        assert (code, out.strip()) == (0, "embed is asleep"), err
        async with daemon.client.post(url, json={}) as response:
            assert response.status == 200
        assert (await daemon.status())["groups"]["default"]["active_models"] == []
    assert lab.violations() == []


async def test_alive_members_that_fit_are_all_adopted_at_start(lab: Lab) -> None:
    await lab.add_backends("chat", "embed")
    for model in ("chat", "embed"):
        (lab.state_dir / f"{model}.awake").touch()
    async with running_daemon(lab.config(policy=BUDGET, per_model=SIZES)) as daemon:
        status = await daemon.status()
        assert status["groups"]["default"]["active_models"] == ["chat", "embed"]
        async with await daemon.chat("chat") as response:
            assert response.status == 200
    assert lab.journal.lines() == []  # nothing woken, nothing put to sleep
    assert lab.violations() == []


async def test_alive_members_beyond_the_budget_are_all_put_to_sleep_at_start(lab: Lab) -> None:
    await lab.add_backends("chat", "embed", "coder")
    for model in ("chat", "coder"):  # 8 + 6 > 12
        (lab.state_dir / f"{model}.awake").touch()
    async with running_daemon(lab.config(policy=BUDGET, per_model=SIZES)) as daemon:
        status = await daemon.status()
        assert status["groups"]["default"]["active_models"] == []
    assert sorted(lab.journal.events("start")) == ["start sleep chat", "start sleep coder"]


async def test_an_exclusive_switch_sleeps_every_member_of_a_budget_group(lab: Lab) -> None:
    await lab.add_backends("chat", "embed", "huge")
    groups = BUDGET + "[groups.big]\nexclusive = true\n"
    per_model = {**SIZES, "huge": {"group": "big"}}
    async with running_daemon(lab.config(policy=groups, per_model=per_model)) as daemon:
        for model in ("chat", "embed", "huge"):
            async with await daemon.chat(model) as response:
                assert (await response.json())["model"] == model
        lines = lab.journal.lines()
        wake_huge = lines.index("start wake huge")
        assert lines.index("end sleep chat") < wake_huge
        assert lines.index("end sleep embed") < wake_huge
        assert (await daemon.status())["groups"]["default"]["active_models"] == []
    lab.journal.assert_no_overlap()
    assert lab.violations() == []


async def test_groups_without_a_budget_show_no_memory(lab: Lab) -> None:
    await lab.add_backends("chat")
    async with running_daemon(lab.config(per_model={"chat": {"memory_gb": 8}})) as daemon:
        async with await daemon.chat("chat") as response:
            assert response.status == 200
        status = await daemon.status()
        group = status["groups"]["default"]
        assert (group["memory_gb"], group["memory_used_gb"]) == (None, 8)
        assert group["active_models"] == ["chat"]
        assert status["models"]["chat"]["memory_gb"] == 8
        metrics = await daemon.metrics()
        assert "llmux_group_memory_budget_gb{" not in metrics
        assert "llmux_group_memory_used_gb{" not in metrics


async def test_idle_sleep_puts_each_member_to_sleep_on_its_own(lab: Lab) -> None:
    await lab.add_backends("chat", "embed")
    config = lab.config(policy="idle_sleep_secs = 0.3\n" + BUDGET, per_model=SIZES)
    async with running_daemon(config) as daemon:
        stream = await daemon.chat("chat", stream=True, chunks=2, gate="g")
        await stream.content.readuntil(b"\n\n")  # chat stays busy
        async with await daemon.chat("embed") as response:
            assert response.status == 200
        switcher = daemon.mux.switchers["default"]
        await wait_for(lambda: list(switcher.awake) == ["chat"])  # embed idled out alone
        lab.backends["chat"].open_gate("g", 1)
        assert (await stream.content.read()).endswith(b"data: [DONE]\n\n")
        stream.close()
        await wait_for(lambda: list(switcher.awake) == [])  # and then chat
    assert lab.journal.events("start")[-2:] == ["start sleep embed", "start sleep chat"]
    assert lab.violations() == []


async def test_a_member_that_dies_is_marked_lost_and_the_others_stay(lab: Lab) -> None:
    await lab.add_backends("chat", "embed")
    config = lab.config(top="alive_interval_secs = 0.1\n", policy=BUDGET, per_model=SIZES)
    async with running_daemon(config) as daemon:
        for model in ("chat", "embed"):
            async with await daemon.chat(model) as response:
                assert response.status == 200
        (lab.state_dir / "embed.awake").unlink()  # its server crashed
        switcher = daemon.mux.switchers["default"]
        await wait_for(lambda: list(switcher.awake) == ["chat"])
        assert "start sleep embed" not in lab.journal.lines()  # lost: no sleep hook
        async with await daemon.chat("embed") as response:  # woken again on demand
            assert (await response.json())["model"] == "embed"
    assert lab.violations() == []


async def test_reloads_add_lower_and_remove_the_budget(lab: Lab) -> None:
    await lab.add_backends("chat", "embed")
    path = lab.tmp / "llmux.toml"
    single = lab.config_text(per_model=SIZES)
    path.write_text(single)
    async with running_daemon(load_config(path)) as daemon:
        switcher = daemon.mux.switchers["default"]

        async def reload(text: str) -> None:
            path.write_text(text)
            async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
                assert (await response.json())["status"] in ("applied", "unchanged")

        async def chat(model: str) -> None:
            async with await daemon.chat(model) as response:
                assert (await response.json())["model"] == model

        await chat("chat")
        await reload(single.replace("[policy]\n", "[policy]\n" + BUDGET, 1))  # added
        await chat("embed")  # fits beside chat: nothing is put to sleep
        assert list(switcher.awake) == ["chat", "embed"]
        assert "start sleep" not in " ".join(lab.journal.lines())
        await chat("embed")  # chat is now the least recently used
        lowered = BUDGET.replace("memory_gb = 12", "memory_gb = 8.5")
        await reload(single.replace("[policy]\n", "[policy]\n" + lowered, 1))
        await wait_for(lambda: list(switcher.awake) == ["embed"])  # 9 > 8.5: chat goes
        await chat("chat")  # 9 again does not fit: embed (LRU now) makes room
        assert list(switcher.awake) == ["chat"]
        await reload(single.replace("[policy]\n", "[policy]\n" + BUDGET, 1))
        await chat("embed")
        await reload(single)  # removed: only the most recently activated stays
        await wait_for(lambda: list(switcher.awake) == ["embed"])
        status = await daemon.status()
        assert status["groups"]["default"]["memory_gb"] is None
    lab.journal.assert_no_overlap()
    assert lab.violations() == []


async def test_a_pending_idle_sleep_does_not_stop_the_other_members_checks(lab: Lab) -> None:
    # coder goes idle while embed's wake holds the group: its idle sleep waits for the
    # driver. The monitor used to wait with it, so no member was looked at meanwhile.
    await lab.add_backends("chat", "embed", "coder")
    go, hook = gated_wake(lab.tmp, lab.state_dir, "embed")
    sizes = {"chat": {"memory_gb": 4}, "embed": {"memory_gb": 1}, "coder": {"memory_gb": 4}}
    config = lab.config(
        top="alive_interval_secs = 0.2\n",
        policy="idle_sleep_secs = 0.5\n" + BUDGET,
        per_model=sizes,
        hooks={"embed": {"wake": hook}},
    )
    async with running_daemon(config) as daemon:
        switcher = daemon.mux.switchers["default"]
        monitor = daemon.mux.monitors["default"]
        for model in ("coder", "chat"):
            async with await daemon.chat(model) as response:
                assert response.status == 200
        chat = await daemon.chat("chat", stream=True, chunks=2, gate="g")  # chat stays busy
        waking = asyncio.create_task(daemon.chat("embed"))
        await wait_for(lambda: switcher.model_status("embed") == "waking")
        await wait_for(lambda: "coder" in monitor.idle_sleeps)  # waits for the driver
        ticks = monitor.ticks
        await wait_for(lambda: monitor.ticks >= ticks + 3)  # chat's checks go on
        assert switcher.model_status("embed") == "waking"
        go.touch()
        lab.backends["chat"].open_gate("g", 1)
        await chat.read()
        chat.close()
        async with await waking as response:
            assert response.status == 200
        await wait_for(lambda: "coder" not in switcher.awake)


async def test_a_member_grown_by_a_reload_during_an_exclusive_clear_is_made_room_for(
    lab: Lab,
) -> None:
    # embed fits beside chat, so the exclusive switch has no victims of its own; while it
    # waits for the other group to sleep, a reload grows chat past the budget. The sizes
    # must be looked at again before embed wakes, not only at the next step.
    await lab.add_backends("chat", "embed", "solo")
    go = lab.tmp / "go"
    journaled = hook_commands(lab.journal.path, lab.state_dir)
    held_sleep = f"while [ ! -e {go} ]; do sleep 0.02; done; {journaled['sleep']}"
    groups = BUDGET + "exclusive = true\n[groups.other]\n"
    path = lab.tmp / "llmux.toml"
    text = lab.config_text(
        policy=groups,
        per_model={**SIZES, "solo": {"group": "other"}},
        hooks={"solo": {"sleep": held_sleep}},
    )
    path.write_text(text)
    async with running_daemon(load_config(path)) as daemon:
        for model in ("chat", "solo"):
            async with await daemon.chat(model) as response:
                assert (await response.json())["model"] == model
        waking = asyncio.create_task(daemon.chat("embed"))
        other = daemon.mux.switchers["other"]
        await wait_for(lambda: other.model_status("solo") == "sleeping")
        grown = text.replace('"memory_gb" = 8', '"memory_gb" = 12').replace(
            "memory_gb = 8", "memory_gb = 12"
        )
        assert grown != text
        path.write_text(grown)
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            assert (await response.json())["status"] == "applied"
        go.touch()
        async with await waking as response:
            assert (await response.json())["model"] == "embed"
        lines = lab.journal.lines()
        assert lines.index("end sleep chat") < lines.index("start wake embed")
        group = (await daemon.status())["groups"]["default"]
        assert group["active_models"] == ["embed"]
    lab.journal.assert_no_overlap()
    assert lab.violations() == []
