"""The simulated GPU with a memory budget (docs/design.md §8): several models awake at once.

It mirrors the switcher of a budget group: a request for an awake model goes straight
through whatever else happens; a target that fits is woken without asking the policy;
otherwise victims (the policy's order, idle ones first, only as many as needed) are
held for `min_active_secs`, drained and put to sleep one after another, then the target
wakes. Hook times come from the same `--switch-cost` matrix: a wake takes the cold start
`idle -> target`, a victim's sleep what the pair `victim -> target` costs beyond that.
The EMA sample is the hooks' time, as in the daemon.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from aiollmux.admission import DEMAND_SECS
from aiollmux.config import PolicyConfig
from aiollmux.eviction import choose_victims
from aiollmux.policy import Decision, PolicyContext, VictimView
from aiollmux.simulate.engine import (
    Request,
    Run,
    SimulatedBackend,
    Simulation,
    SwitchRecord,
    SwitchUnderWay,
)
from aiollmux.simulate.hook_costs import HookCosts
from aiollmux.simulate.workload import Workload


class BudgetSimulation(Simulation):
    def __init__(
        self,
        workload: Workload,
        policy_config: PolicyConfig,
        hook_costs: HookCosts,
        *,
        memory_gb: float,
        sizes: Mapping[str, float],
        concurrency: int = 0,
    ) -> None:
        super().__init__(workload, policy_config, hook_costs, concurrency=concurrency)
        missing = [model for model in workload.models if model not in sizes]
        if missing:
            raise ValueError(f"no memory size for {', '.join(missing)} (--size MODEL=GB)")
        too_big = [model for model in workload.models if sizes[model] > memory_gb]
        if too_big:
            raise ValueError(f"{', '.join(too_big)} larger than the budget ({memory_gb:g} GB)")
        self.memory_gb = memory_gb
        self.sizes = dict(sizes)
        self.awake: dict[str, float] = {}  # model -> when it woke, in activation order
        self.activity = dict.fromkeys(workload.models, 0.0)
        self._demand = dict.fromkeys(workload.models, (0.0, 0.0))  # (count, at)
        self._victims: list[str] = []
        self._last_victim: str | None = None
        self._hook_secs = 0.0

    # -- admission ---------------------------------------------------------------------

    def _is_awake(self, model: str) -> bool:
        return model in self.awake

    def _admit(self, backend: SimulatedBackend, request: Request) -> None:
        super()._admit(backend, request)
        self.activity[backend.name] = self.now
        count, at = self._demand[backend.name]
        self._demand[backend.name] = (count * math.exp((at - self.now) / DEMAND_SECS) + 1, self.now)

    def _after_release(self, backend: SimulatedBackend) -> None:
        self.activity[backend.name] = self.now
        super()._after_release(backend)

    # -- the driver --------------------------------------------------------------------

    def _step(self) -> None:
        if self.switching is not None:
            return
        context = self._context()
        target = context.target
        if target is None:
            return
        self._count_ask()
        if not self._victims_for(target, context):
            decision = Decision.switch(target)  # nothing to put to sleep: no one gains
        else:
            decision = self.policy.decide(context)
        chosen = decision.target
        if decision.action == "switch" and chosen in self.models and chosen not in self.awake:
            self._start_switch(chosen)
            return
        self._step_deferred(decision)

    def _victims_for(self, target: str, context: PolicyContext) -> list[str]:
        used = sum(self.sizes[model] for model in self.awake)
        needed = self.sizes[target] + used - self.memory_gb
        views = [
            VictimView(
                model=model,
                memory_gb=self.sizes[model],
                idle_for=self.now - self.activity[model],
                in_flight=self.models[model].in_flight,
                queued=len(self.models[model].waiters),
                demand=self._demand[model][0]
                * math.exp((self._demand[model][1] - self.now) / DEMAND_SECS),
                bring_back_cost=self.costs.estimate(None, model),
            )
            for model in self.awake
            if model != target
        ]
        return choose_victims(self.policy, views, context, needed)

    # -- a switch: victims one by one, then the wake -----------------------------------

    def _start_switch(self, target: str) -> None:
        victims = self._victims_for(target, self._context())
        self._victims = victims[1:]
        self._last_victim = None
        self._hook_secs = 0.0
        self.switching = SwitchUnderWay(victims[0] if victims else None, target, self.now)
        if not victims:
            self._wake()
        else:
            self._hold_then_drain(victims[0])

    def _hold_then_drain(self, victim: str) -> None:
        hold = self.config.min_active_secs - (self.now - self.awake[victim])
        if hold > 0:
            self._at(self.now + hold, self._drain)
        else:
            self._drain()

    def _run_hooks(self) -> None:
        """The victim is drained: its sleep hook."""
        switch = self.switching
        assert switch is not None
        assert switch.source is not None
        if switch.hooks_started is None:
            switch.hooks_started = self.now
        wake = self.hook_costs.cost(None, switch.target)
        sleep = max(0.0, self.hook_costs.cost(switch.source, switch.target) - wake)
        self._hook_secs += sleep
        self._at(self.now + sleep, self._slept)

    def _slept(self) -> None:
        switch = self.switching
        assert switch is not None
        assert switch.source is not None
        victim = switch.source
        self.models[victim].draining = False
        del self.awake[victim]
        self._set_active_to_latest()
        self._last_victim = victim
        if self._victims:
            switch.source = self._victims.pop(0)
            switch.awaiting_drain = False
            self._hold_then_drain(switch.source)
        else:
            self._wake()

    def _wake(self) -> None:
        switch = self.switching
        assert switch is not None
        if switch.hooks_started is None:
            switch.hooks_started = self.now
        wake = self.hook_costs.cost(None, switch.target)
        self._hook_secs += wake
        self._at(self.now + wake, self._activate)

    def _activate(self) -> None:
        switch = self.switching
        assert switch is not None
        assert switch.hooks_started is not None
        source = self._last_victim
        self.costs.record(source, switch.target, self._hook_secs)
        self.switches.append(
            SwitchRecord(
                source=source,
                target=switch.target,
                started=switch.started,
                hooks_started=switch.hooks_started,
                ended=self.now,
            )
        )
        self.switching = None
        self.awake[switch.target] = self.now
        self.activity[switch.target] = self.now
        self._set_active_to_latest()
        self.last_activity = self.now
        self._release_waiters(self.models[switch.target])
        self._kick()

    def _set_active_to_latest(self) -> None:
        self.active = next(reversed(self.awake), None)
        self.activated_at = self.awake[self.active] if self.active is not None else 0.0


def simulate_budget(
    workload: Workload,
    policy_config: PolicyConfig,
    hook_costs: HookCosts,
    *,
    memory_gb: float,
    sizes: Mapping[str, float],
    concurrency: int = 0,
) -> Run:
    return BudgetSimulation(
        workload,
        policy_config,
        hook_costs,
        memory_gb=memory_gb,
        sizes=sizes,
        concurrency=concurrency,
    ).run()
