"""The fifo vs cost-aware table and chart of docs/policies.md, from the simulator.

    python benchmarks/policy_table.py            # print the table (a few seconds)
    python benchmarks/policy_table.py --write    # put it into docs/policies.md, and
                                                 # the chart into docs/policies-chart.svg
    python benchmarks/policy_table.py --check    # exit 1 if either is stale

The same table as `aiollmux simulate --compare`: three workloads, two and three models,
switch costs of 2, 10 and 60 s, four virtual hours each, seed 1, default knobs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aiollmux.simulate.chart import comparison_chart
from aiollmux.simulate.scenario import comparison_runs, comparison_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "policies.md"
CHART = DOC.with_name("policies-chart.svg")
START = "<!-- policy-table:start (benchmarks/policy_table.py --write) -->\n"
END = "<!-- policy-table:end -->\n"


def splice(document: str, table: str) -> str:
    """The document with the text between the markers replaced by `table`."""
    head, start, rest = document.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{DOC}: the table markers are missing")
    return head + START + table + END + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"update {DOC.name}")
    action.add_argument("--check", action="store_true", help=f"fail if {DOC.name} is stale")
    args = parser.parse_args(argv)
    runs = comparison_runs()
    table = comparison_table(runs)
    if not (args.write or args.check):
        sys.stdout.write(table)
        return 0
    document = DOC.read_text(encoding="utf-8")
    updated = splice(document, table)
    chart = comparison_chart(runs)
    if args.check:
        old_chart = CHART.read_text(encoding="utf-8") if CHART.exists() else ""
        stale = [
            p for p, fresh in ((DOC, updated == document), (CHART, chart == old_chart)) if not fresh
        ]
        for path in stale:
            print(
                f"{path} is stale: run python benchmarks/policy_table.py --write", file=sys.stderr
            )
        return 1 if stale else 0
    DOC.write_text(updated, encoding="utf-8")
    CHART.write_text(chart, encoding="utf-8")
    print(f"wrote the table into {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
