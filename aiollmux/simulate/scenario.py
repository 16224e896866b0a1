"""A simulation scenario (a workload, hook costs, a backend) run through several policies,
and the comparison table of docs/policies.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiollmux.config import PolicyConfig, parse_policy
from aiollmux.simulate.budget import simulate_budget
from aiollmux.simulate.engine import Run, simulate
from aiollmux.simulate.hook_costs import HookCosts
from aiollmux.simulate.report import Summary, summarize
from aiollmux.simulate.workload import DEFAULTS, Params, Workload, generate, load_trace

DEFAULT_POLICIES: Final = ("fifo", "cost-aware")


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    workload: str = "bursty"  # a generator's name; ignored with a trace
    trace: Path | None = None
    models: int = 2
    params: Params | None = None  # None: the generator's defaults
    hook_costs: HookCosts = field(default_factory=HookCosts)
    concurrency: int = 0  # requests a backend serves at once; 0: no limit (a batching server)
    seed: int = 1
    memory_gb: float | None = None  # a memory budget: several models awake (docs/design.md §8)
    sizes: tuple[tuple[str, float], ...] = ()  # each model's memory_gb

    def make_workload(self) -> Workload:
        """A fresh copy (sessions are consumed by a run): the same clients every time."""
        if self.trace is not None:
            return load_trace(self.trace)
        return generate(self.workload, self.models, self.workload_params, self.seed)

    @property
    def workload_params(self) -> Params:
        return self.params if self.params is not None else DEFAULTS[self.workload]

    def describe(self) -> dict[str, Any]:
        return {
            "workload": self.trace.name if self.trace is not None else self.workload,
            "models": self.models if self.trace is None else None,
            "params": None if self.trace is not None else _params(self.workload_params),
            "switch_cost": self.hook_costs.describe(),
            "concurrency": self.concurrency,
            "seed": self.seed,
            "memory_gb": self.memory_gb,
            "sizes": dict(self.sizes),
        }


def _params(params: Params) -> dict[str, float]:
    return {name: getattr(params, name) for name in params.__dataclass_fields__}


def policy_configs(
    names: Iterable[str], knobs: Mapping[str, Any], source: str = "command line"
) -> list[PolicyConfig]:
    """One validated `[policy]` per name, all with the same knobs (`ConfigError` if bad)."""
    return [parse_policy({**knobs, "name": name}, source) for name in names]


def run_scenario(scenario: Scenario, policies: Sequence[PolicyConfig]) -> list[Summary]:
    return [summarize(_run(scenario, policy)) for policy in policies]


def _run(scenario: Scenario, policy: PolicyConfig) -> Run:
    if scenario.memory_gb is None:
        return simulate(
            scenario.make_workload(), policy, scenario.hook_costs, concurrency=scenario.concurrency
        )
    return simulate_budget(
        scenario.make_workload(),
        policy,
        scenario.hook_costs,
        memory_gb=scenario.memory_gb,
        sizes=dict(scenario.sizes),
        concurrency=scenario.concurrency,
    )


# -- the comparison table of docs/policies.md -----------------------------------------

TABLE_WORKLOADS: Final = ("bursty", "chat", "batch")
TABLE_MODELS: Final = (2, 3)
TABLE_COSTS: Final = (2.0, 10.0, 60.0)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One scenario of the comparison: fifo's numbers and cost-aware's."""

    workload: str
    models: int
    switch_cost: float
    fifo: Summary
    aware: Summary


def comparison_runs(
    *,
    seed: int = 1,
    duration: float = 4 * 3600.0,
    concurrency: int = 0,
    knobs: Mapping[str, Any] | None = None,
) -> list[Comparison]:
    """fifo against cost-aware over every workload, model count and switch cost of the
    table; `knobs` are `[policy]` settings for both."""
    policies = policy_configs(DEFAULT_POLICIES, knobs or {})
    runs = []
    for workload in TABLE_WORKLOADS:
        params = dataclasses.replace(DEFAULTS[workload], duration=duration)
        for models in TABLE_MODELS:
            for cost in TABLE_COSTS:
                scenario = Scenario(
                    workload=workload,
                    models=models,
                    params=params,
                    hook_costs=HookCosts(cost),
                    concurrency=concurrency,
                    seed=seed,
                )
                fifo, aware = run_scenario(scenario, policies)
                runs.append(Comparison(workload, models, cost, fifo, aware))
    return runs


def comparison_table(runs: Sequence[Comparison]) -> str:
    """The runs as docs/policies.md's Markdown table."""
    lines = [
        "| workload | models | switch | switches | serving / busy | wait p95 (s) "
        "| wait max (s) | served |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines.extend(_table_row(run) for run in runs)
    return "\n".join(lines) + "\n"


def _table_row(run: Comparison) -> str:
    def pair(a: str, b: str) -> str:
        return f"{a} → {b}"

    fifo, aware = run.fifo, run.aware
    cells = [
        run.workload,
        str(run.models),
        f"{run.switch_cost:g} s",
        pair(str(fifo.switches), str(aware.switches)),
        pair(f"{fifo.serving_share:.0%}", f"{aware.serving_share:.0%}"),
        pair(f"{fifo.wait_p95:.0f}", f"{aware.wait_p95:.0f}"),
        pair(f"{fifo.wait_max:.0f}", f"{aware.wait_max:.0f}"),
        pair(str(fifo.served), str(aware.served)),
    ]
    return "| " + " | ".join(cells) + " |"
