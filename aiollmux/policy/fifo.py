"""llmux's own policy: switch to the model of the oldest waiting request, at once."""

from __future__ import annotations

from aiollmux.config import PolicyConfig
from aiollmux.policy.base import Decision, PolicyContext


class FifoPolicy:
    tick_interval: float | None = None

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    def decide(self, context: PolicyContext) -> Decision:
        if context.target is None:
            return Decision.skip()
        return Decision.switch(context.target)
