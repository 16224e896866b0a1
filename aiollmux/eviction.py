"""Which awake members make room for a target in a group with a memory budget (docs/design.md §8).

The policy orders the candidates (`aiollmux.policy.victim_order`); this takes them in that
order, every idle member before any busy one, until the target fits. The switcher and the
simulator both use it, so they choose the same victims.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiollmux.policy import PolicyContext, VictimView, victim_order

# Sizes are floats (8.5 GB): a rounding error must not make room for nothing.
EPSILON_GB = 1e-9


def choose_victims(
    policy: object, candidates: Sequence[VictimView], context: PolicyContext, needed_gb: float
) -> list[str]:
    """The members to put to sleep, in order, to free `needed_gb` (none if <= 0)."""
    if needed_gb <= EPSILON_GB:
        return []
    order = victim_order(policy, candidates, context)
    sizes = {view.model: view.memory_gb for view in candidates}
    busy = {view.model for view in candidates if view.in_flight or view.queued}
    chosen: list[str] = []
    for model in [m for m in order if m not in busy] + [m for m in order if m in busy]:
        if needed_gb <= EPSILON_GB:
            break
        chosen.append(model)
        needed_gb -= sizes[model]
    return chosen
