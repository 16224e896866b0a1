"""Switch-cost estimates: an exponential moving average per (from, to) pair (docs/design.md §4)."""

from __future__ import annotations

from dataclasses import dataclass

ALPHA = 0.3
IDLE = "idle"  # the `from` of a cold start


@dataclass(slots=True)
class CostEstimate:
    seconds: float
    samples: int


class SwitchCosts:
    """EMA of switch costs (the time the GPU was unavailable: sleep hooks, free-memory
    wait, wake hook; not the drain); the first sample seeds a pair's estimate."""

    def __init__(self, alpha: float = ALPHA) -> None:
        self.alpha = alpha
        self._estimates: dict[tuple[str, str], CostEstimate] = {}

    def record(self, source: str | None, target: str, seconds: float) -> float:
        key = (source or IDLE, target)
        estimate = self._estimates.get(key)
        if estimate is None:
            estimate = self._estimates[key] = CostEstimate(seconds, 1)
        else:
            estimate.seconds = self.alpha * seconds + (1 - self.alpha) * estimate.seconds
            estimate.samples += 1
        return estimate.seconds

    def estimate(self, source: str | None, target: str) -> float | None:
        """The pair's estimate, else the target's mean over any source, else None."""
        found = self._estimates.get((source or IDLE, target))
        if found is not None:
            return found.seconds
        others = [e.seconds for (_, to), e in self._estimates.items() if to == target]
        return sum(others) / len(others) if others else None

    def forget(self, model: str) -> None:
        for key in [k for k in self._estimates if model in k]:
            del self._estimates[key]

    def items(self) -> list[tuple[str, str, CostEstimate]]:
        return [(a, b, e) for (a, b), e in sorted(self._estimates.items())]
