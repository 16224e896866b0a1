"""The fifo vs cost-aware table of docs/policies.md, from the simulator (virtual time).

    python benchmarks/policy_table.py            # print the table (a few seconds)
    python benchmarks/policy_table.py --write    # put it into docs/policies.md
    python benchmarks/policy_table.py --check    # exit 1 if docs/policies.md is stale

The same table as `aiollmux simulate --compare`: three workloads, two and three models,
switch costs of 2, 10 and 60 s, four virtual hours each, seed 1, default knobs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aiollmux.simulate.scenario import comparison_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "policies.md"
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
    table = comparison_table()
    if not (args.write or args.check):
        sys.stdout.write(table)
        return 0
    document = DOC.read_text(encoding="utf-8")
    updated = splice(document, table)
    if args.check:
        if updated != document:
            print(f"{DOC} is stale: run python benchmarks/policy_table.py --write", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(updated, encoding="utf-8")
    print(f"wrote the table into {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
