"""cost-aware in the real daemon: real sockets, real sh hooks journalling their runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aiollmux.switcher import Transition
from tests.support import Daemon, Lab, running_daemon, wait_for

FIFO = 'name = "fifo"\n'
# The first alpha -> beta switch is not measured yet: its bound is 5 x 10 s, capped at
# 30 s, far longer than the test. A model that runs dry lingers 0.02 x 10 s.
COST_AWARE = """name = "cost-aware"
max_wait_secs = 30
initial_switch_cost_secs = 10
linger_factor = 0.02
"""


async def _answer(daemon: Daemon, model: str) -> tuple[int, Any]:
    async with await daemon.chat(model) as response:
        return response.status, (await response.json())["model"]


def _wakes(lab: Lab) -> list[str]:
    return [line.split()[-1] for line in lab.journal.events("start") if " wake " in line]


@pytest.mark.parametrize(
    ("policy", "wakes"),
    [(FIFO, ["alpha", "beta", "alpha"]), (COST_AWARE, ["alpha", "beta"])],
    ids=["fifo", "cost-aware"],
)
async def test_interleaved_requests_switch_less_with_cost_aware(
    lab: Lab, policy: str, wakes: list[str]
) -> None:
    await lab.add_backends("alpha", "beta")
    async with running_daemon(lab.config(hook_delay=0.1, policy=policy)) as daemon:
        switcher = daemon.mux.switchers["default"]
        assert await _answer(daemon, "alpha") == (200, "alpha")
        # alpha keeps working on a stream the test holds open...
        stream = await daemon.chat("alpha", stream=True, chunks=2, gate="g")
        await stream.content.readuntil(b"\n\n")
        # ...while requests for both models come in, one at a time, interleaved.
        tasks: dict[str, list[asyncio.Task[tuple[int, Any]]]] = {"alpha": [], "beta": []}
        for model in ["beta", "alpha", "beta", "alpha", "beta"]:
            tasks[model].append(asyncio.create_task(_answer(daemon, model)))
            await wait_for(lambda: _arrived(switcher.queued, tasks))
        lab.backends["alpha"].open_gate("g", 1)
        assert (await stream.content.read()).endswith(b"data: [DONE]\n\n")
        stream.close()
        for model, started in tasks.items():
            assert await asyncio.gather(*started) == [(200, model)] * len(started)
        # fifo leaves alpha for the first beta request and comes back for the alpha
        # requests that queued meanwhile; cost-aware serves them on the way.
        assert _wakes(lab) == wakes
        lab.journal.assert_no_overlap()
    assert lab.violations() == []


def _arrived(queued: Any, tasks: dict[str, list[asyncio.Task[tuple[int, Any]]]]) -> bool:
    """Every request so far is queued or answered."""
    return all(
        queued(model) + sum(task.done() for task in started) == len(started)
        for model, started in tasks.items()
    )


async def test_a_busy_model_is_left_once_a_waiting_request_is_stale(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    policy = 'name = "cost-aware"\nmax_wait_secs = 0.3\n'
    async with running_daemon(lab.config(policy=policy)) as daemon:
        switcher = daemon.mux.switchers["default"]
        assert await _answer(daemon, "alpha") == (200, "alpha")
        stream = await daemon.chat("alpha", stream=True, chunks=2, gate="g")
        await stream.content.readuntil(b"\n\n")
        beta = asyncio.create_task(_answer(daemon, "beta"))
        # alpha still has work, but beta's request reaches max_wait_secs: the switch
        # starts and drains alpha.
        await wait_for(lambda: switcher.switching == Transition("alpha", "beta"))
        await wait_for(lambda: switcher.model_status("alpha") == "draining")
        assert not beta.done()
        lab.backends["alpha"].open_gate("g", 1)
        assert (await stream.content.read()).endswith(b"data: [DONE]\n\n")
        stream.close()
        assert await beta == (200, "beta")
        assert _wakes(lab) == ["alpha", "beta"]
        # It waited for the bound first (fifo would have left alpha at once): a lower
        # bound on the wait the daemon measured, which no slow machine can break.
        waited = _sample(await daemon.metrics(), "llmux_request_queue_wait_seconds_sum", "beta")
        assert waited >= 0.3
    assert lab.violations() == []


def _sample(metrics: str, name: str, model: str) -> float:
    prefix = f'{name}{{model="{model}"}} '
    [line] = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(line.removeprefix(prefix))


async def test_cost_aware_serves_concurrent_bursts_for_two_models(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    async with running_daemon(lab.config(hook_delay=0.05, policy=COST_AWARE)) as daemon:
        models = ["alpha", "beta"] * 10
        answers = await asyncio.gather(*(_answer(daemon, m) for m in models))
        assert answers == [(200, m) for m in models]
        lab.journal.assert_no_overlap()
        async with daemon.client.get(f"{daemon.url}/admin/status") as response:
            status = await response.json()
        assert all(m["in_flight"] == m["queued"] == 0 for m in status["models"].values())
    assert lab.violations() == []
