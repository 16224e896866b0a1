"""The simulated hooks' durations: how long sleep + wake take for each (from, to) pair.

Written `SECS` (every switch, cold starts too) or `FROM:TO=SECS`, where FROM may be
`idle` (a cold start) or `*`, and TO may be `*`. The most specific entry wins.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from aiollmux.switch_costs import IDLE

ANY: Final = "*"


class CostSpecError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class HookCosts:
    default: float = 10.0
    pairs: dict[tuple[str, str], float] = field(default_factory=dict)

    def cost(self, source: str | None, target: str) -> float:
        origin = source or IDLE
        for key in ((origin, target), (ANY, target), (origin, ANY)):
            if key in self.pairs:
                return self.pairs[key]
        return self.default

    def describe(self) -> str:
        pairs = [f"{a}:{b}={_number(s)}" for (a, b), s in sorted(self.pairs.items())]
        return ", ".join([f"{_number(self.default)} s", *pairs])


def _number(value: float) -> str:
    return f"{value:g}"


def parse_hook_costs(specs: Iterable[str]) -> HookCosts:
    default = 10.0
    pairs: dict[tuple[str, str], float] = {}
    for spec in specs:
        head, equals, value = spec.rpartition("=")
        seconds = _seconds(value, spec)
        if not equals:
            default = seconds
            continue
        source, colon, target = head.partition(":")
        if not colon or not source or not target:
            raise CostSpecError(f"{spec!r}: expected SECS or FROM:TO=SECS")
        pairs[(source, target)] = seconds
    return HookCosts(default, pairs)


def _seconds(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CostSpecError(f"{spec!r}: {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise CostSpecError(f"{spec!r}: expected a finite number of 0 or more seconds")
    return value
