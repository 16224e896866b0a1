"""`cost-aware`: amortise switch costs, and never starve a queue (docs/policies.md).

Stays on the active model while it has work and no waiting request has reached its
staleness bound (`staleness_factor` x the measured cost of the switch to its model, at
most `max_wait_secs`); then serves the most overdue model. A model without work gives
the GPU up once a burst had `coalesce_ms` to gather (and, if it ran dry while others
waited, after lingering `linger_factor` x the switch cost for its clients' next
request), to the model with the most waiting requests per second of switch cost. It
keeps no state: every answer follows from the context.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiollmux.config import PolicyConfig
from aiollmux.policy.base import Decision, PolicyContext, QueueView, VictimView

# A deadline computed as `arrival + bound` counts as reached at that very time, whatever
# the float rounding of `now - arrival`; else a deferral could name the present forever.
SLACK = 1e-6
# Ranks candidates by their queues alone when the measured costs are (about) zero.
MIN_COST = 1e-3


class CostAwarePolicy:
    tick_interval: float | None = None  # every wait it chooses ends at a time it names

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.coalesce = config.coalesce_ms / 1000

    def decide(self, context: PolicyContext) -> Decision:
        waiting = [
            view
            for view in context.queues.values()
            if view.queued and view.model != context.active_model
        ]
        if not waiting:
            return Decision.skip()
        lateness = {
            view.model: view.oldest_wait - self.bound(context, view.model) for view in waiting
        }
        most_late = max(waiting, key=lambda view: (lateness[view.model], view.oldest_wait))
        if lateness[most_late.model] >= -SLACK:
            return Decision.switch(most_late.model)
        deadline = context.now - lateness[most_late.model]  # when the first one goes stale
        if _has_work(context):
            return Decision.defer(until=deadline)
        target = max(waiting, key=lambda view: self._worth(context, view)).model
        settle = self._settle(context, target, max(view.oldest_wait for view in waiting))
        if settle > SLACK:
            return Decision.defer(until=min(context.now + settle, deadline))
        return Decision.switch(target)

    def order_victims(self, candidates: Sequence[VictimView], context: PolicyContext) -> list[str]:
        """The least valuable first: lowest recent demand x the cost of bringing it back
        (the longest idle first among equals)."""

        def value(view: VictimView) -> tuple[float, float]:
            cost = view.bring_back_cost
            if cost is None:
                cost = self.config.initial_switch_cost_secs
            return (view.demand * max(cost, MIN_COST), -view.idle_for)

        return [view.model for view in sorted(candidates, key=value)]

    def bound(self, context: PolicyContext, model: str) -> float:
        """How long a request for `model` may wait while the active model keeps the GPU."""
        scaled = self.config.staleness_factor * self.cost(context, model)
        return min(self.config.max_wait_secs, scaled)

    def cost(self, context: PolicyContext, model: str) -> float:
        """The measured cost (EMA) of switching from the active model to `model`."""
        estimate = context.switch_cost(context.active_model, model)
        return self.config.initial_switch_cost_secs if estimate is None else estimate

    def _settle(self, context: PolicyContext, target: str, oldest_wait: float) -> float:
        """How much longer to keep a model with no work (or the GPU idle) before switching
        to `target`: a burst gathers for `coalesce_ms`; a model that ran dry while others
        already waited keeps the GPU up to `linger_factor` x the switch cost for its
        clients' next request. 0 when there is no choice to make."""
        if len(context.queues) < 2:
            return 0.0
        settle = self.coalesce - oldest_wait
        if context.active_model is not None:
            idle_for = context.active_idle_for
            settle = max(settle, self.coalesce - idle_for)
            if idle_for < oldest_wait:
                linger = self.config.linger_factor * self.cost(context, target)
                settle = max(settle, linger - idle_for)
        return settle

    def _worth(self, context: PolicyContext, view: QueueView) -> tuple[float, float]:
        """Waiting requests per second of switch cost; the older queue wins a tie."""
        return (view.queued / max(self.cost(context, view.model), MIN_COST), view.oldest_wait)


def _has_work(context: PolicyContext) -> bool:
    if context.active_model is None:
        return False
    view = context.queues.get(context.active_model)
    return view is not None and (view.in_flight > 0 or view.queued > 0)
