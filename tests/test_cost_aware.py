"""The policy contract (docs/design.md §9): fifo as llmux, cost-aware's rules, and the switcher
asking the policy on ticks and ignoring a switch to the active model."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from aiollmux.config import PolicyConfig
from aiollmux.policy import Decision, Policy, PolicyContext, QueueView, load_policy, next_ask
from aiollmux.policy.cost_aware import CostAwarePolicy
from aiollmux.switcher import Switcher
from tests.support import Journal, two_model_switcher, wait_for

NOW = 1000.0
# Spelled out, so that a change of the defaults does not silently change these tests.
KNOBS = PolicyConfig(
    name="cost-aware",
    max_wait_secs=120.0,
    staleness_factor=5.0,
    coalesce_ms=200.0,
    linger_factor=0.5,
    initial_switch_cost_secs=10.0,
)


def view(model: str, queued: int = 0, oldest: float = 0.0, in_flight: int = 0) -> QueueView:
    return QueueView(model=model, queued=queued, oldest_wait=oldest, in_flight=in_flight)


def context(
    *views: QueueView,
    active: str | None = None,
    idle_for: float = 0.0,
    costs: Mapping[tuple[str, str], float] | None = None,  # ("idle", to) for a cold start
    now: float = NOW,
) -> PolicyContext:
    """A context as the switcher builds it: `target` is the oldest waiting non-active model."""
    waiting = [v for v in views if v.queued and v.model != active]
    oldest = max(waiting, key=lambda v: v.oldest_wait, default=None)
    table = costs or {}
    return PolicyContext(
        now=now,
        target=oldest.model if oldest is not None else None,
        active_model=active,
        active_for=60.0 if active is not None else 0.0,
        queues={v.model: v for v in views},
        switch_cost=lambda source, target: table.get((source or "idle", target)),
        active_idle_for=idle_for,
    )


def aware(**knobs: float) -> CostAwarePolicy:
    policy = load_policy(PolicyConfig(**{**_fields(KNOBS), **knobs}))  # type: ignore[arg-type]
    assert isinstance(policy, CostAwarePolicy)
    return policy


def _fields(config: PolicyConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


# -- fifo: llmux's behaviour ------------------------------------------------------------


def test_fifo_switches_on_the_first_request_even_while_the_active_model_works() -> None:
    fifo = load_policy(PolicyConfig())
    busy = context(view("a", in_flight=5), view("b", queued=1), active="a")
    assert fifo.decide(busy) == Decision.switch("b")
    assert fifo.decide(context(view("a", queued=3), view("b", queued=1, oldest=2))) == (
        Decision.switch("b")  # the oldest request's model, not the longest queue
    )
    assert fifo.decide(context(view("a", in_flight=1), active="a")) == Decision.skip()
    assert fifo.tick_interval is None


# -- cost-aware -------------------------------------------------------------------------


def test_cost_aware_is_a_builtin_policy() -> None:
    policy = load_policy(PolicyConfig(name="cost-aware"))
    assert isinstance(policy, CostAwarePolicy)
    assert isinstance(policy, Policy)
    assert policy.tick_interval is None


def test_nothing_waiting_for_another_model_is_a_skip() -> None:
    policy = aware()
    assert policy.decide(context(view("a", in_flight=2), view("b"), active="a")) == Decision.skip()
    assert policy.decide(context(view("a", queued=2), view("b"), active="a")) == Decision.skip()


def test_stays_on_a_busy_model_until_the_bound_of_the_waiting_request() -> None:
    costs = {("a", "b"): 8.0}
    busy = context(view("a", in_flight=2), view("b", queued=3, oldest=10), active="a", costs=costs)
    # bound = staleness_factor x measured cost = 40 s; 10 s already waited.
    assert aware().decide(busy) == Decision.defer(until=NOW + 30)


def test_the_bound_is_capped_by_max_wait_secs() -> None:
    costs = {("a", "b"): 60.0}  # 5 x 60 = 300 s, capped at 120 s
    busy = context(view("a", in_flight=1), view("b", queued=1, oldest=20), active="a", costs=costs)
    assert aware().decide(busy) == Decision.defer(until=NOW + 100)
    assert aware(max_wait_secs=30).decide(busy) == Decision.defer(until=NOW + 10)


def test_an_unmeasured_switch_costs_initial_switch_cost_secs() -> None:
    busy = context(view("a", in_flight=1), view("b", queued=1), active="a")
    assert aware().decide(busy) == Decision.defer(until=NOW + 50)
    assert aware(initial_switch_cost_secs=2).decide(busy) == Decision.defer(until=NOW + 10)


def test_a_stale_request_wins_over_a_busy_model_exactly_at_its_deadline() -> None:
    policy = aware()
    arrived = NOW - 12.3456789  # a time whose differences do not round evenly
    since = NOW - arrived
    first = policy.decide(
        context(view("a", in_flight=1), view("b", queued=1, oldest=since), active="a")
    )
    assert first.action == "defer"
    assert first.until is not None
    late = first.until - arrived
    at_deadline = context(
        view("a", in_flight=1), view("b", queued=1, oldest=late), active="a", now=first.until
    )
    assert policy.decide(at_deadline) == Decision.switch("b")


def test_the_most_overdue_model_goes_first_not_the_biggest_queue() -> None:
    costs = {("a", "b"): 2.0, ("a", "c"): 2.0}  # bounds of 10 s
    busy = context(
        view("a", in_flight=1),
        view("b", queued=50, oldest=15),
        view("c", queued=1, oldest=30),
        active="a",
        costs=costs,
    )
    assert aware().decide(busy) == Decision.switch("c")


def test_from_idle_a_burst_gathers_for_coalesce_ms_then_the_best_worth_wins() -> None:
    policy = aware()
    costs = {("idle", "b"): 10.0, ("idle", "c"): 50.0}
    early = context(view("b", queued=2, oldest=0.05), view("c", queued=5, oldest=0.01))
    assert policy.decide(early) == Decision.defer(until=NOW + 0.15)
    # b: 2 requests per 10 s of switching = 0.2/s; c: 5 per 50 s = 0.1/s.
    ready = context(view("b", queued=2, oldest=0.2), view("c", queued=5, oldest=0.1), costs=costs)
    assert policy.decide(ready) == Decision.switch("b")
    tie = context(view("b", queued=1, oldest=0.2), view("c", queued=1, oldest=0.3))
    assert policy.decide(tie) == Decision.switch("c")  # same worth: the older queue


def test_a_model_that_ran_dry_while_others_waited_lingers_for_its_next_request() -> None:
    policy = aware()
    costs = {("a", "b"): 10.0}  # linger = 0.5 x 10 s
    dry = context(view("a"), view("b", queued=1, oldest=20), active="a", idle_for=1, costs=costs)
    assert policy.decide(dry) == Decision.defer(until=NOW + 4)
    done = context(view("a"), view("b", queued=1, oldest=24), active="a", idle_for=5, costs=costs)
    assert policy.decide(done) == Decision.switch("b")


def test_lingering_never_passes_a_waiting_request_s_deadline() -> None:
    costs = {("a", "b"): 10.0}  # bound 50 s, linger 5 s
    dry = context(view("a"), view("b", queued=1, oldest=48), active="a", costs=costs)
    assert aware().decide(dry) == Decision.defer(until=NOW + 2)


def test_a_model_idle_before_the_request_came_only_waits_for_the_burst() -> None:
    policy = aware()
    quiet = context(view("a"), view("b", queued=1, oldest=0.0), active="a", idle_for=100)
    assert policy.decide(quiet) == Decision.defer(until=NOW + 0.2)
    later = context(view("a"), view("b", queued=3, oldest=0.2), active="a", idle_for=100.2)
    assert policy.decide(later) == Decision.switch("b")


def test_with_no_coalescing_and_no_lingering_a_dry_model_is_left_at_once() -> None:
    policy = aware(coalesce_ms=0, linger_factor=0)
    dry = context(view("a"), view("b", queued=1), active="a")
    assert policy.decide(dry) == Decision.switch("b")


def test_a_group_of_one_model_wakes_it_at_once() -> None:
    assert aware().decide(context(view("a", queued=1))) == Decision.switch("a")


def test_zero_switch_costs_make_it_fifo() -> None:
    costs = {("a", "b"): 0.0, ("a", "c"): 0.0}
    views = (view("a", in_flight=3), view("b", queued=9, oldest=1), view("c", queued=1, oldest=2))
    busy = context(*views, active="a", costs=costs)
    assert aware().decide(busy) == load_policy(PolicyConfig()).decide(busy) == Decision.switch("c")


# -- the protocol: when the switcher asks again ----------------------------------------


@pytest.mark.parametrize(
    ("decision", "tick", "expected"),
    [
        (Decision.defer(until=15.0), None, 15.0),
        (Decision.defer(), None, None),
        (Decision.skip(), None, None),
        (Decision.defer(), 2.0, 12.0),
        (Decision.skip(), 2.0, 12.0),
        (Decision.switch("a"), 2.0, 12.0),  # a switch the switcher ignored
        (Decision.defer(until=11.0), 2.0, 11.0),
        (Decision.defer(until=15.0), 2.0, 12.0),
        (Decision.defer(until=15.0), 0.0, 15.0),
    ],
)
def test_next_ask(decision: Decision, tick: float | None, expected: float | None) -> None:
    assert next_ask(decision, 10.0, tick) == expected


class ScriptedPolicy:
    """Answers from a script (the last answer repeats), recording every context."""

    tick_interval: float | None = 0.02

    def __init__(self, config: PolicyConfig) -> None:
        self.answers: list[Decision] = [Decision.defer()]
        self.contexts: list[PolicyContext] = []

    def decide(self, context: PolicyContext) -> Decision:
        self.contexts.append(context)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_switcher(tmp_path: Path, policy: ScriptedPolicy, clock: Clock | None = None) -> Switcher:
    return two_model_switcher(tmp_path, policy, clock=clock, ports=(9201, 9202))


async def test_a_policy_with_a_tick_is_asked_again_while_a_request_waits(tmp_path: Path) -> None:
    policy = ScriptedPolicy(PolicyConfig())
    policy.answers = [Decision.defer(), Decision.skip(), Decision.defer(), Decision.switch("beta")]
    switcher = make_switcher(tmp_path, policy)
    switcher.start()
    try:
        guard = await asyncio.wait_for(switcher.acquire("beta"), 10)
        guard.release()
        # No event but the tick could have asked the second, third and fourth time.
        assert len(policy.contexts) >= 4
        assert all(c.target == "beta" for c in policy.contexts[:4])
    finally:
        await switcher.close()


async def test_a_switch_to_the_active_model_is_ignored(tmp_path: Path) -> None:
    policy = ScriptedPolicy(PolicyConfig())
    policy.answers = [Decision.switch("alpha"), Decision.switch("beta")]
    switcher = make_switcher(tmp_path, policy)
    switcher.adopt("alpha")
    switcher.start()
    try:
        (await asyncio.wait_for(switcher.acquire("beta"), 10)).release()
        assert Journal(tmp_path / "journal.log").lines() == [
            "start sleep alpha", "end sleep alpha", "start wake beta", "end wake beta",
        ]  # fmt: skip
    finally:
        await switcher.close()


async def test_the_context_says_how_long_the_active_model_has_had_no_work(
    tmp_path: Path, clock: Clock
) -> None:
    policy = ScriptedPolicy(PolicyConfig())
    policy.tick_interval = None
    switcher = make_switcher(tmp_path, policy, clock)
    switcher.adopt("alpha")
    switcher.start()
    try:
        working = await switcher.acquire("alpha")
        clock.now = 105.0
        waiting = asyncio.create_task(switcher.acquire("beta"))
        await wait_for(lambda: len(policy.contexts) == 1)
        assert policy.contexts[0].active_idle_for == 0.0  # a request is in flight
        assert policy.contexts[0].queues["alpha"].in_flight == 1
        clock.now = 107.0
        working.release()  # in flight reaches zero while beta waits: asked again
        await wait_for(lambda: len(policy.contexts) == 2)
        clock.now = 110.0
        switcher.reconsider()
        await wait_for(lambda: len(policy.contexts) == 3)
        assert [c.active_idle_for for c in policy.contexts[1:]] == [0.0, 3.0]
        assert policy.contexts[2].queues["beta"].oldest_wait == 5.0
        policy.answers = [Decision.switch("beta")]
        switcher.reconsider()
        (await asyncio.wait_for(waiting, 10)).release()
    finally:
        await switcher.close()
