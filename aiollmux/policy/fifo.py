"""llmux's own policy: switch to the model of the oldest waiting request, at once."""

from __future__ import annotations

from collections.abc import Sequence

from aiollmux.config import PolicyConfig
from aiollmux.policy.base import Decision, PolicyContext, VictimView, least_recently_used


class FifoPolicy:
    tick_interval: float | None = None

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    def decide(self, context: PolicyContext) -> Decision:
        if context.target is None:
            return Decision.skip()
        return Decision.switch(context.target)

    def order_victims(self, candidates: Sequence[VictimView], context: PolicyContext) -> list[str]:
        """Least recently used first: the member whose last request ended longest ago."""
        return least_recently_used(candidates)
