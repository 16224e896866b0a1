"""The simulator's claim (aiollmux/simulate/engine.py, docs/design.md §9): it "mirrors
Switcher step for step". A trace goes through both — `simulate()` in virtual time, and the
real `Switcher` with real `sh` hooks in real time, every duration scaled by `SCALE` — and
both must make the same switches (from → to) in the same order at the same virtual times,
and let each request in at the same virtual time.

The switcher sleeps on the event loop's clock (the min_active_secs hold, drain and request
timeouts, the driver's retries), so it runs in real time; its clock is the loop's, read
here in virtual seconds. Real hooks take longer than their `sleep` (`sh` has to start:
0.01-0.1 s a hook on this 2-core machine with the suite running beside it), so the
simulator is checked twice: with the nominal hook durations it must do exactly what the
trace says, and with the durations the real run measured it must do what the switcher
did. What is left is the lateness of the loop's timers and tasks (a few milliseconds a
step). Every decision in a trace has at least `MARGIN` virtual seconds to spare (a request
arrives a second before a hold ends, or after a drain began), and the comparison allows
`TOLERANCE`, half of that: a run within it cannot have taken another branch.

Known difference, kept out of these traces (docs/decisions.md, issue 14): the simulator
samples a switch's cost over the whole switch, hold and drain included, the switcher over
its hooks only, so cost-aware's staleness bounds part after a switch that held or drained.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiollmux.config import PolicyConfig
from aiollmux.simulate.engine import simulate
from aiollmux.simulate.hook_costs import ANY, HookCosts
from aiollmux.simulate.workload import Job, Workload
from aiollmux.switch_costs import IDLE
from tests.support import two_model_switcher

SCALE = 1.0  # real seconds per virtual second
MARGIN = 1.0  # virtual seconds every decision of a trace has to spare
TOLERANCE = MARGIN / 2
# The loop's timers may fire up to its clock resolution early; nothing else runs early.
EARLY = 0.01
HOOK_SECS = 1.0  # each wake and each sleep hook (virtual)

Trace = list[tuple[float, str, float]]  # (arrival, model, service), virtual seconds


@dataclass(frozen=True)
class Switch:
    source: str | None
    target: str
    started: float
    hooks_started: float
    ended: float


@dataclass(frozen=True)
class Case:
    trace: Trace
    policy: Callable[[float], PolicyConfig]  # its times in units of the argument
    switches: list[Switch]  # what the trace's comments say must happen
    admitted: list[float]  # when each request is let in


FIFO = Case(
    trace=[
        (0.0, "alpha", 4.0),  # a cold start: idle → alpha (0 to 1), served 1 to 5
        (0.5, "beta", 1.0),  # queued behind that switch; fifo then switches at 1, but
        (2.0, "alpha", 0.5),  # alpha holds the GPU until 3 (min_active_secs): let in at once
        (4.0, "alpha", 1.0),  # alpha drains from 3 until its first request ends at 5: queued
        (6.0, "beta", 1.0),  # during alpha → beta's hooks (5 to 7): queued, let in at 7
    ],
    policy=lambda unit: PolicyConfig(name="fifo", min_active_secs=2 * unit),
    switches=[
        Switch(None, "alpha", 0.0, 0.0, 1.0),
        Switch("alpha", "beta", 1.0, 5.0, 7.0),  # decided at 1, held to 3, drained to 5
        Switch("beta", "alpha", 7.0, 9.0, 11.0),  # decided at 7, held to 9 (idle from 8)
    ],
    admitted=[1.0, 7.0, 2.0, 11.0, 7.0],
)

COST_AWARE = Case(
    trace=[
        (0.0, "alpha", 1.0),  # a cold start (0 to 1; its cost, 1, is measured), served 1 to 2
        (0.5, "beta", 3.0),  # alpha has work: wait up to 2 x 1 (the initial cost), but
        # alpha runs dry at 2 and lingers not at all: alpha → beta at 2, hooks 2 to 4
        (3.0, "alpha", 1.0),  # beta serves 4 to 7; this one may wait 2 x 1 (the measured
        # cost of waking alpha): stale at 5, so beta → alpha at 5, drained to 7
    ],
    policy=lambda unit: PolicyConfig(
        name="cost-aware",
        staleness_factor=2.0,
        initial_switch_cost_secs=1 * unit,
        max_wait_secs=100 * unit,
        coalesce_ms=0.0,
        linger_factor=0.0,
    ),
    switches=[
        Switch(None, "alpha", 0.0, 0.0, 1.0),
        Switch("alpha", "beta", 2.0, 2.0, 4.0),
        Switch("beta", "alpha", 5.0, 7.0, 9.0),
    ],
    admitted=[1.0, 4.0, 9.0],
)


# The cost sample is the hooks' time, not the hold and drain before them (docs/design.md
# §4): the second alpha → beta is decided when beta's request has waited 2 x the 2 s the
# first one's hooks took (at 17), not 2 x the whole first switch (4.5 s: alpha ran dry
# first, at 19). The simulator sampled the whole switch until this case was added.
COST_SAMPLE = Case(
    trace=[
        (0.0, "alpha", 4.0),  # a cold start (0 to 1), served 1 to 5
        (0.5, "beta", 1.0),  # stale at 2.5 (2 x the initial cost): held to 3, drained to 5
        (7.5, "alpha", 8.0),  # beta runs dry at 8: held to 9, hooks 9 to 11, served to 19
        (13.0, "beta", 1.0),  # stale at 13 + 2 x 2 = 17: drained to 19, hooks 19 to 21
    ],
    policy=lambda unit: PolicyConfig(
        name="cost-aware",
        staleness_factor=2.0,
        min_active_secs=2 * unit,
        initial_switch_cost_secs=1 * unit,
        max_wait_secs=100 * unit,
        coalesce_ms=0.0,
        linger_factor=0.0,
    ),
    switches=[
        Switch(None, "alpha", 0.0, 0.0, 1.0),
        Switch("alpha", "beta", 2.5, 5.0, 7.0),
        Switch("beta", "alpha", 8.0, 9.0, 11.0),
        Switch("alpha", "beta", 17.0, 19.0, 21.0),
    ],
    admitted=[1.0, 7.0, 11.0, 21.0],
)


# What the hooks take: a cold start runs one wake hook; a switch a sleep and a wake hook.
NOMINAL = HookCosts(2 * HOOK_SECS, {(IDLE, ANY): HOOK_SECS})


def measured(switches: list[Switch]) -> HookCosts:
    """What the hooks took in the real run, for each (from, to) pair (the mean of a pair
    made more than once)."""
    taken: dict[tuple[str, str], list[float]] = {}
    for switch in switches:
        taken.setdefault((switch.source or IDLE, switch.target), []).append(
            switch.ended - switch.hooks_started
        )
    return HookCosts(2 * HOOK_SECS, {pair: sum(t) / len(t) for pair, t in taken.items()})


def simulated(case: Case, costs: HookCosts) -> tuple[list[Switch], list[float]]:
    jobs = [Job(time=t, model=model, service=service) for t, model, service in case.trace]
    workload = Workload(name="trace", models=("alpha", "beta"), jobs=jobs)
    run = simulate(workload, case.policy(1.0), costs)
    switches = [
        Switch(s.source, s.target, s.started, s.hooks_started, s.ended) for s in run.switches
    ]
    admitted = [r.admitted for r in sorted(run.requests, key=lambda r: r.number)]
    return switches, [float("nan") if a is None else a for a in admitted]


class _Events(logging.Handler):
    """The switcher's and the hooks' log events, stamped with the loop's clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.DEBUG)
        self.loop = loop
        self.records: list[tuple[float, logging.LogRecord]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((self.loop.time(), record))


@contextmanager
def captured_events(loop: asyncio.AbstractEventLoop) -> Iterator[_Events]:
    handler = _Events(loop)
    loggers = [logging.getLogger("aiollmux.switcher"), logging.getLogger("aiollmux.hooks")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


async def real(case: Case, tmp_path: Path) -> tuple[list[Switch], list[float]]:
    loop = asyncio.get_running_loop()
    switcher = two_model_switcher(
        tmp_path,
        clock=loop.time,
        hook_delay=HOOK_SECS * SCALE,
        **dataclasses.asdict(case.policy(SCALE)),
    )
    admitted = [float("nan")] * len(case.trace)

    async def client(number: int, arrival: float, model: str, service: float) -> None:
        await asyncio.sleep(arrival - loop.time())  # the trace's arrival time
        guard = await switcher.acquire(model)
        admitted[number] = (loop.time() - start) / SCALE
        try:
            await asyncio.sleep(service * SCALE)  # the backend serving it
        finally:
            guard.release()

    with captured_events(loop) as events:
        switcher.start()
        try:
            start = loop.time()
            clients = [
                client(number, start + t * SCALE, model, service)
                for number, (t, model, service) in enumerate(case.trace)
            ]
            async with asyncio.timeout(60 * SCALE):
                await asyncio.gather(*clients)
        finally:
            await switcher.close()
    return _switches(events.records, start), admitted


def _switches(records: list[tuple[float, logging.LogRecord]], start: float) -> list[Switch]:
    """From the log: a switch starts (`switch_started`: decided), its first hook ran
    `duration` before `hook_completed`, and it ends (`model_activated`)."""
    switches: list[Switch] = []
    opened: tuple[str | None, str, float] | None = None
    hooks: float | None = None
    for when, record in records:
        fields = record.__dict__  # the `extra` of the log call
        event = fields.get("event")
        virtual = (when - start) / SCALE
        if event == "switch_started":
            source = fields["from"]
            opened = (None if source == IDLE else source, fields["to"], virtual)
            hooks = None
        elif event == "hook_completed" and opened is not None and hooks is None:
            hooks = virtual - fields["duration"] / SCALE
        elif event == "model_activated":
            assert opened is not None
            assert hooks is not None
            switches.append(Switch(opened[0], opened[1], opened[2], hooks, virtual))
            opened = None
    return switches


@pytest.mark.parametrize(
    "case", [FIFO, COST_AWARE, COST_SAMPLE], ids=["fifo", "cost-aware", "cost-sample"]
)
async def test_one_trace_makes_the_same_switches_in_the_simulator_and_the_switcher(
    tmp_path: Path, case: Case
) -> None:
    # The simulator is exact in virtual time: the trace says what it must do.
    assert simulated(case, NOMINAL) == (case.switches, case.admitted)

    switches, admitted = await real(case, tmp_path)
    # The same trace with the hooks taking as long as they really did: what is left to
    # differ is what the switcher and the simulator each decide and when.
    sim_switches, sim_admitted = simulated(case, measured(switches))
    assert [(s.source, s.target) for s in switches] == [(s.source, s.target) for s in sim_switches]
    for real_switch, sim_switch in zip(switches, sim_switches, strict=True):
        for field in ("started", "hooks_started", "ended"):
            lateness = getattr(real_switch, field) - getattr(sim_switch, field)
            assert -EARLY <= lateness <= TOLERANCE, (field, real_switch, sim_switch)
    for number, (real_at, sim_at) in enumerate(zip(admitted, sim_admitted, strict=True)):
        lateness = real_at - sim_at
        assert -EARLY <= lateness <= TOLERANCE, (number, admitted, sim_admitted)
