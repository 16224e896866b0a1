"""The policy contract: a read-only context in, a decision out (DESIGN §9).

The switcher asks its policy whenever a request waits for a model that is not active,
after every switch, and, if the policy sets `tick_interval`, periodically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    now: float  # the switcher's monotonic clock
    target: str | None  # model of the oldest request waiting for a model that is not active
    active_model: str | None
    active_for: float  # seconds since the active model became active; 0 when idle
    queues: Mapping[str, QueueView]
    switch_cost: Callable[[str | None, str], float | None]  # EMA estimate (from, to)

    @property
    def active_in_flight(self) -> int:
        if self.active_model is None:
            return 0
        view = self.queues.get(self.active_model)
        return view.in_flight if view is not None else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
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
    """A switch policy. Constructed as `Class(config: PolicyConfig)`."""

    tick_interval: float | None

    def decide(self, context: PolicyContext) -> Decision: ...


PolicyFactory = Callable[[PolicyConfig], Policy]
