"""docs/design.md §4's hard invariants under hundreds of concurrent mixed requests.

Fake backends record a violation whenever a request reaches them (or they answer) while
asleep; hooks journal their start and end so overlaps show; afterwards every counter
must be back to zero.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter

import aiohttp

from aiollmux.config import load_config
from tests.support import Daemon, Lab, hook_commands, running_daemon, wait_for

MODELS = ("alpha", "beta", "gamma")


async def _one(daemon: Daemon, rng: random.Random, index: int) -> tuple[str, str]:
    # Spread arrivals so that requests keep landing during switches. This shapes the load;
    # nothing in the test depends on when a request actually arrives.
    await asyncio.sleep(rng.random() * 1.5)
    model = rng.choice(MODELS)
    kind = rng.choice(("plain", "plain", "stream", "stream", "leave"))
    body = {"delay": rng.choice((0, 0, 0.001, 0.01))}
    if kind == "plain":
        async with await daemon.chat(model, **body) as response:
            assert response.status == 200, await response.text()
            return model, str((await response.json())["model"])
    response = await daemon.chat(model, stream=True, chunks=rng.randint(1, 4), chunk_delay=0.002)
    try:
        assert response.status == 200, await response.text()
        first = json.loads((await response.content.readuntil(b"\n\n")).removeprefix(b"data: "))
        if kind == "leave":
            return model, str(first["model"])  # the client goes away mid-stream
        rest = await response.content.read()
        assert rest.endswith(b"data: [DONE]\n\n")
        return model, str(first["model"])
    finally:
        response.close()


async def _run_mix(lab: Lab, *, requests: int, seed: int, policy: str = "") -> None:
    await lab.add_backends(*MODELS)
    delays = {"alpha": 0.0, "beta": 0.02, "gamma": 0.05}
    hooks = {m: hook_commands(lab.journal.path, lab.state_dir, delay=d) for m, d in delays.items()}
    rng = random.Random(seed)
    async with running_daemon(lab.config(hooks=hooks, policy=policy)) as daemon:
        connector = aiohttp.TCPConnector(limit=400)
        async with aiohttp.ClientSession(connector=connector) as client:
            daemon.client = client
            results = await asyncio.gather(*(_one(daemon, rng, i) for i in range(requests)))
        for asked, answered in results:
            assert asked == answered
        mux = daemon.mux
        switcher = mux.switchers["default"]
        for model in MODELS:
            await wait_for(lambda m=model: switcher.in_flight(m) == 0)  # type: ignore[misc]
            assert switcher.queued(model) == 0
        assert mux.hooks.running == 0
        async with aiohttp.ClientSession() as client:
            daemon.client = client
            metrics = await daemon.metrics()
        for model in MODELS:
            assert f'llmux_model_in_flight{{model="{model}"}} 0.0' in metrics
            assert f'llmux_request_queue_depth{{model="{model}"}} 0.0' in metrics
    lab.journal.assert_no_overlap()
    assert lab.violations() == []
    wakes = [line for line in lab.journal.events("start") if " wake " in line]
    # How many switches a mix makes depends on how fast the machine is (a loaded one
    # serves fewer arrivals per switch); a handful proves that switching really happened.
    assert len(wakes) >= 4, "the mix must really switch models"
    # Every wake was followed by that model's sleep before the next wake.
    awake: str | None = None
    for line in lab.journal.events("end"):
        _, hook, model = line.split()
        if hook == "wake":
            assert awake is None, f"{model} woke while {awake} was awake"
            awake = model
        else:
            assert awake == model
            awake = None


async def test_mixed_concurrent_traffic_keeps_every_invariant(lab: Lab) -> None:
    await _run_mix(lab, requests=300, seed=1)


async def test_invariants_hold_with_min_active_and_drain_timeout(lab: Lab) -> None:
    await _run_mix(
        lab, requests=150, seed=2, policy="min_active_secs = 0.02\ndrain_timeout_secs = 5\n"
    )


# -- a group with a memory budget (docs/design.md §8) ----------------------------------------------

BUDGET_SIZES = {"alpha": 4, "beta": 4, "gamma": 6, "delta": 8}
BUDGET_GB = 12


def _budget_hooks(lab: Lab, model: str) -> dict[str, str]:
    """Hooks that journal, take varying time, fail a model's 2nd wake and every 5th after
    it, and keep the group's occupied memory in files: `<m>.mem` (its size) from the start
    of its wake to the end of its sleep. Each wake adds its size, then sums the group's:
    over the budget is written to `memory-violations` (memory only grows when a wake
    starts, so that is every moment it could exceed the budget)."""
    j, s = lab.journal.path, lab.state_dir
    count = f"{s}/{model}.wakes"
    wake = (
        f'echo "start wake $LLMUX_MODEL" >> {j}; '
        f'echo {BUDGET_SIZES[model]} > {s}/"$LLMUX_MODEL".mem; '
        f"total=$(cat {s}/*.mem | awk '{{t += $1}} END {{print t}}'); "
        f'if [ "$total" -gt {BUDGET_GB} ]; then '
        f'echo "$LLMUX_MODEL woke with $total GB occupied" >> {s}/memory-violations; fi; '
        f"n=$(cat {count} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {count}; "
        f"sleep 0.0$((n % 4)); "
        f'if [ $((n % 5)) -eq 2 ]; then echo "end wake $LLMUX_MODEL" >> {j}; '
        f"echo 'no room' >&2; exit 1; fi; "
        f'touch {s}/"$LLMUX_MODEL".awake; echo "end wake $LLMUX_MODEL" >> {j}'
    )
    sleep = (
        f'echo "start sleep $LLMUX_MODEL" >> {j}; sleep 0.01; '
        f'rm -f {s}/"$LLMUX_MODEL".awake {s}/"$LLMUX_MODEL".mem; '
        f'echo "end sleep $LLMUX_MODEL" >> {j}'
    )
    return {"wake": wake, "sleep": sleep, "alive": f'test -e {s}/"$LLMUX_MODEL".awake'}


async def _budget_request(daemon: Daemon, rng: random.Random, spread: float) -> str:
    await asyncio.sleep(rng.random() * spread)  # shapes the load; nothing depends on it
    model = rng.choice(list(BUDGET_SIZES))
    kind = rng.choice(("plain", "plain", "stream", "stream", "leave"))
    if kind == "plain":
        response = await daemon.chat(model, delay=rng.choice((0, 0.001, 0.01)))
    else:
        response = await daemon.chat(
            model, stream=True, chunks=rng.randint(1, 4), chunk_delay=0.002
        )
    async with response:
        if response.status == 503:
            assert (await response.json())["error"]["code"] == "wake_failed"
            return "wake_failed"
        assert response.status == 200, await response.text()
        if kind == "plain":
            assert (await response.json())["model"] == model
            return "ok"
        first = json.loads((await response.content.readuntil(b"\n\n")).removeprefix(b"data: "))
        assert first["model"] == model
        if kind == "leave":
            return "left"  # the client goes away mid-stream
        assert (await response.content.read()).endswith(b"data: [DONE]\n\n")
        return "ok"


async def _admin_churn(daemon: Daemon, lab: Lab, rng: random.Random, rounds: int) -> int:
    """Admin sleeps of single models and reloads that lower and restore the budget."""
    path = lab.tmp / "llmux.toml"
    text = path.read_text()
    done = 0
    for index in range(rounds):
        await asyncio.sleep(rng.random() * 0.2)
        if index % 3 == 2:
            budget = rng.choice((10, BUDGET_GB))
            path.write_text(text.replace(_budget_table(BUDGET_GB), _budget_table(budget), 1))
            async with daemon.client.post(f"{daemon.url}/admin/reload") as answer:
                assert answer.status == 200, await answer.text()
        else:
            model = rng.choice(list(BUDGET_SIZES))
            url = f"{daemon.url}/admin/sleep"
            async with daemon.client.post(url, json={"model": model}) as answer:
                assert answer.status == 200, await answer.text()
        done += 1
    return done


def _budget_table(budget: float) -> str:
    return f"[groups.default]\nmemory_gb = {budget}\n"


def _budget_config_text(lab: Lab) -> str:
    hooks = {model: _budget_hooks(lab, model) for model in BUDGET_SIZES}
    per_model = {model: {"memory_gb": size} for model, size in BUDGET_SIZES.items()}
    return lab.config_text(hooks=hooks, per_model=per_model, policy=_budget_table(BUDGET_GB))


async def run_budget_chaos(lab: Lab, *, requests: int, seed: int) -> dict[str, int]:
    await lab.add_backends(*BUDGET_SIZES)
    rng = random.Random(seed)
    path = lab.tmp / "llmux.toml"
    path.write_text(_budget_config_text(lab))
    outcomes: Counter[str] = Counter()
    async with running_daemon(load_config(path)) as daemon:
        connector = aiohttp.TCPConnector(limit=400)
        async with aiohttp.ClientSession(connector=connector) as client:
            daemon.client = client
            spread = max(3.0, requests / 100)  # seconds over which requests arrive
            traffic = asyncio.gather(
                *(_budget_request(daemon, rng, spread) for _ in range(requests))
            )
            churn = _admin_churn(daemon, lab, rng, rounds=max(12, requests // 10))
            results, admin = await asyncio.gather(traffic, churn)
        outcomes.update(results)
        outcomes["admin"] = admin
        mux = daemon.mux
        switcher = mux.switchers["default"]
        for model in BUDGET_SIZES:
            await wait_for(lambda m=model: switcher.in_flight(m) == 0)  # type: ignore[misc]
            assert switcher.queued(model) == 0
        await wait_for(lambda: mux.hooks.running == 0)
        async with aiohttp.ClientSession() as client:
            daemon.client = client
            metrics = await daemon.metrics()
        for model in BUDGET_SIZES:
            assert f'llmux_model_in_flight{{model="{model}"}} 0.0' in metrics
            assert f'llmux_request_queue_depth{{model="{model}"}} 0.0' in metrics
        used = switcher.memory_used_gb()
        assert used is not None
        assert used <= BUDGET_GB
    lab.journal.assert_no_overlap()
    assert lab.violations() == []
    violations = lab.state_dir / "memory-violations"
    assert not violations.exists(), violations.read_text()
    outcomes["wakes"] = len([line for line in lab.journal.events("start") if " wake " in line])
    outcomes["sleeps"] = len([line for line in lab.journal.events("start") if " sleep " in line])
    return dict(outcomes)


async def test_a_budget_group_keeps_every_invariant_under_chaos(lab: Lab) -> None:
    requests = int(os.environ.get("AIOLLMUX_CHAOS_REQUESTS", "300"))
    outcomes = await run_budget_chaos(lab, requests=requests, seed=3)
    print("budget chaos:", outcomes)
    served = outcomes.get("ok", 0) + outcomes.get("left", 0)
    assert served + outcomes.get("wake_failed", 0) == requests
    assert outcomes["wakes"] >= 6, "the mix must really wake and evict models"
    assert outcomes["sleeps"] >= 3
    assert outcomes.get("wake_failed", 0) > 0, "some wakes must fail"
