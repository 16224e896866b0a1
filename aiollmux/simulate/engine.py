"""The simulated GPU box: one switcher and one GPU in virtual time (docs/design.md §9).

It drives the real policy object and mirrors `aiollmux.switcher.Switcher` step for
step: the same admission rule, the same moments to ask the policy, the same switch
(min_active_secs, drain, drain timeout, then the hooks), the same EMA cost estimates
(a sample is the whole switch, hold and drain included). The backend of the active
model serves up to `concurrency` requests at a time (0: no limit); requests admitted
beyond that wait inside it, in flight as far as the switcher knows.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from aiollmux.config import PolicyConfig
from aiollmux.policy import Decision, PolicyContext, QueueView, load_policy, next_ask
from aiollmux.simulate.hook_costs import HookCosts
from aiollmux.simulate.workload import Job, Workload
from aiollmux.switch_costs import SwitchCosts

GRACE_SECS = 86_400.0  # still waiting a virtual day after the last arrival: unserved
MAX_ASKS_AT_ONE_TIME = 10_000  # no progress: a policy deferring to the present, say

Outcome = Literal["waiting", "served", "cut", "timeout", "rejected", "unserved"]
GpuState = Literal["serving", "switching", "idle"]


class SimulationError(RuntimeError):
    pass


class _Timer:
    __slots__ = ("action", "cancelled")

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(slots=True, eq=False)
class Request:
    number: int
    job: Job
    admitted: float | None = None  # counted in flight (the end of its wait)
    started: float | None = None  # got a slot in the backend
    ended: float | None = None
    outcome: Outcome = "waiting"
    timer: _Timer | None = None  # its request timeout while queued, then its service end

    @property
    def wait(self) -> float:
        """Seconds in the switcher's queue (as `llmux_request_queue_wait_seconds`)."""
        end = self.admitted if self.admitted is not None else self.ended
        return (end if end is not None else self.job.time) - self.job.time


@dataclass(frozen=True, slots=True, kw_only=True)
class SwitchRecord:
    source: str | None
    target: str
    started: float
    hooks_started: float  # the hold and the drain are over
    ended: float


@dataclass(slots=True, eq=False)
class SimulatedBackend:
    """One model in the simulation: its queue, admitted requests and drain state."""

    name: str
    waiters: deque[Request] = field(default_factory=deque)
    queued_inside: deque[Request] = field(default_factory=deque)  # admitted, no slot yet
    serving: dict[int, Request] = field(default_factory=dict)
    draining: bool = False

    @property
    def in_flight(self) -> int:
        return len(self.queued_inside) + len(self.serving)


@dataclass(slots=True, eq=False)
class SwitchUnderWay:
    """The one switch the simulated GPU is making: from, to, and where it stands."""

    source: str | None
    target: str
    started: float
    awaiting_drain: bool = False
    drain_timer: _Timer | None = None
    hooks_started: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    policy: str
    workload: Workload
    requests: list[Request]
    switches: list[SwitchRecord]
    gpu: dict[GpuState, float]
    asks: int  # how often the policy was consulted
    end: float


class Simulation:
    """One run of a workload through one policy. `run()` once."""

    def __init__(
        self,
        workload: Workload,
        policy_config: PolicyConfig,
        hook_costs: HookCosts,
        *,
        concurrency: int = 0,
    ) -> None:
        self.workload = workload
        self.config = policy_config
        self.policy = load_policy(policy_config, "<simulate>")
        self.hook_costs = hook_costs
        self.concurrency = concurrency
        self.costs = SwitchCosts()
        self.models = {name: SimulatedBackend(name) for name in workload.models}
        self.active: str | None = None
        self.activated_at = 0.0
        self.last_activity = 0.0  # a request started or ended, or a model became active
        self.switching: SwitchUnderWay | None = None
        self.requests: list[Request] = []
        self.switches: list[SwitchRecord] = []
        self.gpu: dict[GpuState, float] = {"serving": 0.0, "switching": 0.0, "idle": 0.0}
        self.asks = 0
        self.now = 0.0
        self._events: list[tuple[float, int, _Timer]] = []
        self._sequence = 0
        self._retry: _Timer | None = None
        self._last_arrival = 0.0
        self._asks_now = (0.0, 0)
        self._kicked = False

    # -- the event loop ------------------------------------------------------------------

    def run(self) -> Run:
        for job in self.workload.jobs:
            self._schedule_arrival(job)
        while self._events:
            when, _, timer = heapq.heappop(self._events)
            if timer.cancelled:
                continue
            if when > self._last_arrival + GRACE_SECS:
                self._advance(self._last_arrival + GRACE_SECS)
                break
            self._advance(when)
            timer.action()
        for backend in self.models.values():
            for request in backend.waiters:
                request.outcome = "unserved"
                request.ended = self.now
        return Run(
            policy=self.config.name,
            workload=self.workload,
            requests=self.requests,
            switches=self.switches,
            gpu=self.gpu,
            asks=self.asks,
            end=self.now,
        )

    def _at(self, when: float, action: Callable[[], None]) -> _Timer:
        timer = _Timer(action)
        heapq.heappush(self._events, (max(when, self.now), self._sequence, timer))
        self._sequence += 1
        return timer

    def _advance(self, when: float) -> None:
        """Account the GPU's state since the previous event, then move the clock."""
        state: GpuState = "idle"
        if self.switching is not None and self.switching.hooks_started is not None:
            state = "switching"
        elif any(backend.serving for backend in self.models.values()):
            state = "serving"
        self.gpu[state] += when - self.now
        self.now = when

    def _schedule_arrival(self, job: Job) -> None:
        self._last_arrival = max(self._last_arrival, job.time)
        self._at(job.time, lambda: self._arrive(job))

    # -- requests (Switcher.acquire and the backend) ------------------------------------

    def _arrive(self, job: Job) -> None:
        request = Request(len(self.requests), job)
        self.requests.append(request)
        backend = self.models[job.model]
        if self._is_awake(job.model) and not backend.draining and not backend.waiters:
            self._admit(backend, request)
            return
        limit = self.config.max_queued_requests
        if limit and len(backend.waiters) >= limit:
            self._end(request, "rejected")
            return
        backend.waiters.append(request)
        timeout = self.config.request_timeout_secs
        if timeout is not None:
            request.timer = self._at(self.now + timeout, lambda: self._time_out(backend, request))
        self._kick()

    def _is_awake(self, model: str) -> bool:
        return self.active == model

    def _admit(self, backend: SimulatedBackend, request: Request) -> None:
        if request.timer is not None:
            request.timer.cancel()
        request.admitted = self.now
        self.last_activity = self.now
        backend.queued_inside.append(request)
        self._fill(backend)

    def _fill(self, backend: SimulatedBackend) -> None:
        while backend.queued_inside and (
            self.concurrency == 0 or len(backend.serving) < self.concurrency
        ):
            request = backend.queued_inside.popleft()
            request.started = self.now
            backend.serving[request.number] = request
            request.timer = self._at(
                self.now + request.job.service, self._finisher(backend, request)
            )

    def _finisher(self, backend: SimulatedBackend, request: Request) -> Callable[[], None]:
        return lambda: self._finish(backend, request)

    def _finish(self, backend: SimulatedBackend, request: Request) -> None:
        del backend.serving[request.number]
        self._end(request, "served")
        self._fill(backend)
        self._after_release(backend)

    def _time_out(self, backend: SimulatedBackend, request: Request) -> None:
        backend.waiters.remove(request)
        self._end(request, "timeout")

    def _end(self, request: Request, outcome: Outcome) -> None:
        request.outcome = outcome
        request.ended = self.now
        follow = self.workload.follow(request.job, self.now)
        if follow is not None:
            self._schedule_arrival(follow)

    def _cut(self, backend: SimulatedBackend) -> None:
        """The drain timed out (or is not waited for): end what is still in flight."""
        cut = [*backend.serving.values(), *backend.queued_inside]
        backend.serving.clear()
        backend.queued_inside.clear()
        for request in cut:
            if request.timer is not None:
                request.timer.cancel()
            self._end(request, "cut")

    def _after_release(self, backend: SimulatedBackend) -> None:
        """Switcher._release: at zero in flight a drain ends and the policy is asked."""
        self.last_activity = self.now
        if backend.in_flight:
            return
        switch = self.switching
        if switch is not None and switch.awaiting_drain and switch.source == backend.name:
            switch.awaiting_drain = False
            if switch.drain_timer is not None:
                switch.drain_timer.cancel()
            self._run_hooks()
        if any(other.waiters for other in self.models.values()):
            self._kick()

    # -- the driver (Switcher._step and _context) ---------------------------------------

    def _kick(self) -> None:
        """Switcher._kick: the driver answers every kick of one event-loop iteration with
        one ask, so requests arriving together are weighed together. Here: one ask after
        every event already queued for this instant."""
        if not self._kicked:
            self._kicked = True
            self._at(self.now, self._kicked_step)

    def _kicked_step(self) -> None:
        self._kicked = False
        self._step()

    def _step(self) -> None:
        if self.switching is not None:
            return  # the switch asks again when it ends
        # (The switcher first lets in requests queued for the active model: only a forced
        # switch leaves any, and there are none here.)
        context = self._context()
        if context.target is None:
            return
        self._count_ask()
        decision = self.policy.decide(context)
        target = decision.target
        if decision.action == "switch" and target in self.models and target != self.active:
            self._start_switch(target)
            return
        self._step_deferred(decision)

    def _step_deferred(self, decision: Decision) -> None:
        """The policy did not switch: ask again when it said (or at its tick)."""
        ask_again = next_ask(decision, self.now, self.policy.tick_interval)
        if ask_again is not None:
            if self._retry is not None:
                self._retry.cancel()
            self._retry = self._at(ask_again, self._kick)

    def _count_ask(self) -> None:
        self.asks += 1
        when, count = self._asks_now
        count = count + 1 if when == self.now else 1
        if count > MAX_ASKS_AT_ONE_TIME:
            raise SimulationError(
                f"no virtual time passed in {count} decisions at t={self.now:.3f}s: policy"
                f" {self.config.name!r} defers to the present, or switches take no time"
            )
        self._asks_now = (self.now, count)

    def _context(self) -> PolicyContext:
        queues: dict[str, QueueView] = {}
        target: str | None = None
        oldest = float("inf")
        for name, backend in self.models.items():
            first = backend.waiters[0].job.time if backend.waiters else self.now
            queues[name] = QueueView(
                model=name,
                queued=len(backend.waiters),
                oldest_wait=self.now - first,
                in_flight=backend.in_flight,
            )
            if backend.waiters and not self._is_awake(name) and first < oldest:
                target, oldest = name, first
        active = queues.get(self.active) if self.active is not None else None
        return PolicyContext(
            now=self.now,
            target=target,
            active_model=self.active,
            active_for=self.now - self.activated_at if self.active is not None else 0.0,
            queues=queues,
            switch_cost=self.costs.estimate,
            active_idle_for=(
                self.now - self.last_activity
                if active is not None and active.in_flight == 0
                else 0.0
            ),
        )

    def _release_waiters(self, backend: SimulatedBackend) -> None:
        while backend.waiters:
            self._admit(backend, backend.waiters.popleft())

    # -- a switch (Switcher._switch_locked and _put_to_sleep) ---------------------------

    def _start_switch(self, target: str) -> None:
        self.switching = SwitchUnderWay(self.active, target, self.now)
        if self.active is None:
            self._run_hooks()
            return
        hold = self.config.min_active_secs - (self.now - self.activated_at)
        if hold > 0:
            self._at(self.now + hold, self._drain)
        else:
            self._drain()

    def _drain(self) -> None:
        switch = self.switching
        assert switch is not None
        assert switch.source is not None
        backend = self.models[switch.source]
        backend.draining = True
        if not self.config.drain_before_switch:
            self._cut(backend)  # the sleep hook takes the backend down under them
        if backend.in_flight == 0:
            self._run_hooks()
            return
        switch.awaiting_drain = True
        limit = self.config.drain_timeout_secs
        if limit > 0:
            switch.drain_timer = self._at(self.now + limit, lambda: self._drain_timed_out(backend))

    def _drain_timed_out(self, backend: SimulatedBackend) -> None:
        self._cut(backend)
        self._after_release(backend)

    def _run_hooks(self) -> None:
        switch = self.switching
        assert switch is not None
        switch.hooks_started = self.now
        self._at(self.now + self.hook_costs.cost(switch.source, switch.target), self._activate)

    def _activate(self) -> None:
        switch = self.switching
        assert switch is not None
        assert switch.hooks_started is not None
        if switch.source is not None:
            self.models[switch.source].draining = False
        self.costs.record(switch.source, switch.target, self.now - switch.hooks_started)
        self.switches.append(
            SwitchRecord(
                source=switch.source,
                target=switch.target,
                started=switch.started,
                hooks_started=switch.hooks_started,
                ended=self.now,
            )
        )
        self.switching = None
        self.active = switch.target
        self.activated_at = self.last_activity = self.now
        self._release_waiters(self.models[switch.target])
        self._kick()  # others may be waiting: ask again


def simulate(
    workload: Workload,
    policy_config: PolicyConfig,
    hook_costs: HookCosts,
    *,
    concurrency: int = 0,
) -> Run:
    return Simulation(workload, policy_config, hook_costs, concurrency=concurrency).run()
