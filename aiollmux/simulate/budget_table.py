"""docs/policies.md's "one at a time" against "by budget" table (docs/design.md §8).

A 12 GB card, a chat model (8 GB), a coder model (6 GB) and an embedding model (1 GB):
chat and coder do not fit together, either fits beside the embedder. Chat and coder
users come in bursts; the embedder is called all the time by everyone (retrieval).

    python -m aiollmux.simulate.budget_table      # prints the table
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from aiollmux.config import PolicyConfig
from aiollmux.simulate.budget import simulate_budget
from aiollmux.simulate.engine import simulate
from aiollmux.simulate.hook_costs import HookCosts
from aiollmux.simulate.report import Summary, summarize
from aiollmux.simulate.workload import DEFAULTS, Params, Workload, bursty, poisson

SIZES: Final = {"chat": 8.0, "coder": 6.0, "embed": 1.0}
BUDGET_GB: Final = 12.0
SWITCH_SECS: Final = 10.0
POLICIES: Final = ("fifo", "cost-aware")


def workload(seed: int = 1, duration: float = 4 * 3600.0) -> Workload:
    rng = random.Random(seed)
    base = DEFAULTS["bursty"]
    chat = bursty(("chat",), replace(base, duration=duration, on=1200.0, off=300.0), rng)
    coder = bursty(("coder",), replace(base, duration=duration, on=300.0, off=1800.0), rng)
    embed = Params(duration=duration, rate=0.05, service=0.2)
    calls = poisson(("embed",), embed, rng)
    jobs = sorted([*chat.jobs, *coder.jobs, *calls.jobs], key=lambda job: job.time)
    return Workload("chat+coder+embed", tuple(SIZES), jobs)


@dataclass(frozen=True, slots=True)
class Row:
    policy: str
    mode: str
    summary: Summary


def rows(seed: int = 1, duration: float = 4 * 3600.0) -> list[Row]:
    costs = HookCosts(SWITCH_SECS)
    found = []
    for name in POLICIES:
        policy = PolicyConfig(name=name)
        single = simulate(workload(seed, duration), policy, costs)
        budget = simulate_budget(
            workload(seed, duration), policy, costs, memory_gb=BUDGET_GB, sizes=SIZES
        )
        found.append(Row(name, "one at a time", summarize(single)))
        found.append(Row(name, f"by budget ({BUDGET_GB:g} GB)", summarize(budget)))
    return found


def table(found: Sequence[Row]) -> str:
    lines = [
        "| policy | mode | switches (wakes) | wait p95 (s) | wait p99 (s) | served |",
        "|---|---|---|---|---|---|",
    ]
    for row in found:
        s = row.summary
        lines.append(
            f"| {row.policy} | {row.mode} | {s.switches} | {s.wait_p95:.1f} | {s.wait_p99:.1f} "
            f"| {s.served} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(rows()), end="")
