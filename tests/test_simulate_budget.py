"""`aiollmux simulate` with a memory budget (docs/design.md §8): several models awake at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from aiollmux.cli import main
from aiollmux.config import PolicyConfig
from aiollmux.simulate import budget_table
from aiollmux.simulate.budget import simulate_budget
from aiollmux.simulate.hook_costs import HookCosts
from aiollmux.simulate.workload import Job, Workload

DOCS = Path(__file__).resolve().parent.parent / "docs" / "policies.md"


def trace(*jobs: tuple[float, str, float]) -> Workload:
    models = tuple(sorted({model for _, model, _ in jobs}))
    return Workload("trace", models, [Job(time=t, model=m, service=s) for t, m, s in jobs])


def test_a_model_that_fits_wakes_beside_the_others() -> None:
    run = simulate_budget(
        trace((0, "a", 1), (100, "b", 1), (200, "a", 1), (300, "b", 1)),
        PolicyConfig(),
        HookCosts(10),
        memory_gb=12,
        sizes={"a": 6, "b": 6},
    )
    assert [(s.source, s.target) for s in run.switches] == [(None, "a"), (None, "b")]
    assert [r.wait for r in run.requests] == [10.0, 10.0, 0.0, 0.0]


def test_the_least_recently_used_makes_room_and_only_as_much_as_needed() -> None:
    run = simulate_budget(
        trace((0, "a", 1), (100, "b", 1), (200, "c", 1), (300, "a", 1), (400, "d", 1)),
        PolicyConfig(),
        HookCosts(10, {("b", "d"): 15.0}),  # a sleep of b costs 15 - 10 = 5 s
        memory_gb=12,
        sizes={"a": 4, "b": 4, "c": 4, "d": 4},
    )
    assert [(s.source, s.target) for s in run.switches] == [
        (None, "a"), (None, "b"), (None, "c"), ("b", "d"),
    ]  # fmt: skip
    assert run.requests[-1].wait == 15.0  # b's sleep, then d's wake


def test_the_doc_table_is_current_and_meets_the_targets() -> None:
    rows = budget_table.rows()
    text = DOCS.read_text()
    found = re.search(r"<!-- budget-table -->\n(.*?)<!-- /budget-table -->", text, re.S)
    assert found is not None
    assert found.group(1) == budget_table.table(rows), (
        "run python -m aiollmux.simulate.budget_table"
    )
    by = {(row.policy, row.mode.split()[0]): row.summary for row in rows}
    for policy in budget_table.POLICIES:
        single, budget = by[(policy, "one")], by[(policy, "by")]
        assert budget.switches * 3 <= single.switches
        assert budget.wait_p99 <= single.wait_p99
        assert budget.served == single.served


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "m1=4"], "--size needs --memory-gb"),
        (["--memory-gb", "12", "--size", "m1=4"], "no memory size for m2"),
        (["--memory-gb", "12", "--size", "m1=4", "--size", "m2=13"], "m2 larger than the budget"),
        (["--memory-gb", "12", "--size", "m1=x"], "'x' is not a number of GB"),
        (["--memory-gb", "12", "--size", "m1=0"], "expected more than 0 GB"),
    ],
)
def test_budget_options_are_checked(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["simulate", "--param", "duration=60", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_simulate_with_a_budget_from_the_command_line() -> None:
    sizes = ["--size", "m1=6", "--size", "m2=6"]
    args = ["simulate", "--param", "duration=600", "--policy", "fifo", *sizes]
    single = CliRunner().invoke(main, ["simulate", "--param", "duration=600", "--policy", "fifo"])
    budget = CliRunner().invoke(main, [*args, "--memory-gb", "12"])
    assert single.exit_code == budget.exit_code == 0
    switches = [
        int(re.search(r"switches\s+(\d+)", result.output).group(1))  # type: ignore[union-attr]
        for result in (single, budget)
    ]
    assert switches[1] == 2  # each woke once and stayed
    assert switches[0] > 2
