"""The policy contract: a read-only context in, a decision out (docs/design.md §9).

The switcher of a GPU group asks its policy while a request waits for a model that is
not active: when such a request is queued, after every switch, when a model's in-flight
count reaches zero, at the time a deferral named, and every `tick_interval` seconds if
the policy sets one. docs/policies.md is the guide; `aiollmux simulate` asks the same
questions at the same moments, in virtual time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from aiollmux.config import PolicyConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueView:
    """What the policy may know about one model of the group."""

    model: str
    queued: int
    oldest_wait: float  # seconds the oldest queued request has waited; 0 when none
    in_flight: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyContext:
    now: float  # the switcher's monotonic clock (virtual time in the simulator)
    target: str | None  # model of the oldest request waiting for a model that is not active
    active_model: str | None
    active_for: float  # seconds since the active model became active; 0 when idle
    queues: Mapping[str, QueueView]  # every model of the group, in configuration order
    switch_cost: Callable[[str | None, str], float | None]  # EMA estimate (from, to)
    # Seconds the active model has had nothing in flight; 0 while it has (or when idle).
    active_idle_for: float = 0.0

    @property
    def active_in_flight(self) -> int:
        if self.active_model is None:
            return 0
        view = self.queues.get(self.active_model)
        return view.in_flight if view is not None else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """`switch` to a model of the group (a switch to the active model is ignored);
    `defer` until a time or the next event; `skip` (nothing to do: wait for an event)."""

    action: Literal["switch", "defer", "skip"]
    target: str | None = None
    until: float | None = None  # with "defer": ask again at this time (else at the next event)

    @staticmethod
    def switch(target: str) -> Decision:
        return Decision(action="switch", target=target)

    @staticmethod
    def defer(until: float | None = None) -> Decision:
        return Decision(action="defer", until=until)

    @staticmethod
    def skip() -> Decision:
        return Decision(action="skip")


@runtime_checkable
class Policy(Protocol):
    """A switch policy. Constructed as `Class(config: PolicyConfig)`.

    `tick_interval`: None, or ask again every that many seconds while requests wait.
    `decide` must be quick and must not block: it runs on the event loop.
    """

    tick_interval: float | None

    def decide(self, context: PolicyContext) -> Decision: ...


PolicyFactory = Callable[[PolicyConfig], Policy]


@dataclass(frozen=True, slots=True, kw_only=True)
class VictimView:
    """An awake member of a group with a memory budget that could be put to sleep to make
    room for another (docs/design.md §8)."""

    model: str
    memory_gb: float
    idle_for: float  # seconds since a request last started or ended on it (or it woke)
    in_flight: int
    queued: int
    demand: float  # requests it took recently (a count decayed with a 5-minute constant)
    bring_back_cost: float | None  # EMA estimate of waking it again from idle; None: unknown


def least_recently_used(candidates: Sequence[VictimView]) -> list[str]:
    """fifo's victim order, and the default: the member idle the longest first."""
    return [view.model for view in sorted(candidates, key=lambda view: -view.idle_for)]


def victim_order(
    policy: object, candidates: Sequence[VictimView], context: PolicyContext
) -> list[str]:
    """The policy's `order_victims(candidates, context)` if it has one, else least recently
    used. Names it leaves out (or invents) are fixed: every candidate appears exactly once,
    those it left out after it in least-recently-used order."""
    order = getattr(policy, "order_victims", None)
    if order is None:
        return least_recently_used(candidates)
    known = {view.model for view in candidates}
    chosen = list(dict.fromkeys(m for m in order(candidates, context) if m in known))
    return chosen + [m for m in least_recently_used(candidates) if m not in chosen]


def next_ask(decision: Decision, now: float, tick_interval: float | None) -> float | None:
    """When to ask again after a decision that did not switch, if no event comes first:
    the time a deferral named or the policy's next tick, whichever is sooner."""
    times = [decision.until] if decision.action == "defer" and decision.until is not None else []
    if tick_interval is not None and tick_interval > 0:
        times.append(now + tick_interval)
    return min(times, default=None)
