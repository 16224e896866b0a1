"""llmux's own end-to-end scenarios, on real sockets with real sh hooks."""

from __future__ import annotations

import asyncio

from tests.support import Lab, running_daemon


async def test_single_model(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        async with await daemon.chat("alpha") as response:
            assert response.status == 200
            assert (await response.json())["model"] == "alpha"
        assert lab.journal.lines() == ["start wake alpha", "end wake alpha"]
    assert lab.violations() == []


async def test_switch_between_two(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    async with running_daemon(lab.config()) as daemon:
        for model in ("alpha", "beta", "alpha"):
            async with await daemon.chat(model) as response:
                assert (await response.json())["model"] == model
        assert lab.journal.lines() == [
            "start wake alpha", "end wake alpha",
            "start sleep alpha", "end sleep alpha", "start wake beta", "end wake beta",
            "start sleep beta", "end sleep beta", "start wake alpha", "end wake alpha",
        ]  # fmt: skip
        status = await daemon.status()
        assert status["active_model"] == "alpha"
        assert status["models"]["beta"]["state"] == "asleep"
    assert lab.violations() == []


async def test_same_model_twice_does_not_switch(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    async with running_daemon(lab.config()) as daemon:
        for _ in range(3):
            async with await daemon.chat("alpha") as response:
                assert response.status == 200
        assert lab.journal.count("start wake alpha") == 1
        assert lab.journal.events("start") == ["start wake alpha"]


async def test_unknown_model_is_404(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        async with await daemon.chat("nope") as response:
            assert response.status == 404
            error = (await response.json())["error"]
            assert error["code"] == "model_not_found"
            assert error["type"] == "invalid_request_error"
        assert lab.journal.lines() == []


async def test_concurrent_requests_for_one_model_wake_once(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config(hook_delay=0.2)) as daemon:

        async def one() -> str:
            async with await daemon.chat("alpha") as response:
                return str((await response.json())["model"])

        assert await asyncio.gather(*(one() for _ in range(20))) == ["alpha"] * 20
        assert lab.journal.count("start wake alpha") == 1


async def test_concurrent_requests_for_different_models(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta", "gamma")
    async with running_daemon(lab.config()) as daemon:

        async def one(model: str) -> str:
            async with await daemon.chat(model) as response:
                assert response.status == 200
                return str((await response.json())["model"])

        models = ["alpha", "beta", "gamma"] * 10
        assert await asyncio.gather(*(one(m) for m in models)) == models
        lab.journal.assert_no_overlap()
    assert lab.violations() == []


async def test_switch_time_reflects_hook_time_and_cost_is_recorded(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config(hook_delay=0.3)) as daemon:
        async with await daemon.chat("alpha") as response:
            assert response.status == 200
        costs = (await daemon.status())["switch_costs"]
        assert len(costs) == 1
        assert costs[0]["from"] == "idle"
        assert costs[0]["to"] == "alpha"
        assert costs[0]["samples"] == 1
        assert costs[0]["seconds"] >= 0.3
        metrics = await daemon.metrics()
        assert 'llmux_switch_total{from="idle",result="success",to="alpha"} 1.0' in metrics
        assert 'llmux_switch_cost_ema_seconds{from="idle",to="alpha"}' in metrics


async def test_models_endpoint(lab: Lab) -> None:
    await lab.add_backends("beta", "alpha")
    config = lab.config(per_model={"alpha": {"aliases": ["a1", "org/alpha-7b"]}})
    async with running_daemon(config) as daemon:
        async with daemon.client.get(f"{daemon.url}/v1/models") as response:
            listing = await response.json()
        assert listing["object"] == "list"
        assert [m["id"] for m in listing["data"]] == ["alpha", "beta"]
        assert listing["data"][0]["aliases"] == ["a1", "org/alpha-7b"]
        async with daemon.client.get(f"{daemon.url}/v1/models/org/alpha-7b") as response:
            assert (await response.json())["id"] == "alpha"
        async with daemon.client.get(f"{daemon.url}/v1/models/missing") as response:
            assert response.status == 404
        async with await daemon.chat("a1") as response:
            assert (await response.json())["model"] == "alpha"
