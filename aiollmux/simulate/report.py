"""What a simulated run comes to: switches, GPU time, waits; as text, CSV or JSON.

A request's wait is its time in the switcher's queue, from arrival until it is counted
in flight (the daemon's `llmux_request_queue_wait_seconds`); a request that never got
there (timed out, still waiting at the end) counts with the time it waited.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aiollmux.simulate.engine import Run


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    policy: str
    workload: str
    models: int
    requests: int
    served: int
    cut: int
    timed_out: int
    rejected: int
    unserved: int
    switches: int
    serving_secs: float
    switching_secs: float
    idle_secs: float
    wait_p50: float
    wait_p95: float
    wait_p99: float
    wait_max: float
    wait_mean: float
    max_wait_by_model: dict[str, float]

    @property
    def serving_share(self) -> float:
        """GPU time serving as a share of the time it was busy (serving or switching)."""
        busy = self.serving_secs + self.switching_secs
        return self.serving_secs / busy if busy > 0 else 1.0

    def as_dict(self) -> dict[str, Any]:
        """The numbers, seconds rounded to the millisecond."""
        fields = {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}
        fields["max_wait_by_model"] = {m: round(w, 3) for m, w in self.max_wait_by_model.items()}
        return {**fields, "serving_share": round(self.serving_share, 4)}


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank on sorted `values`; 0 for none."""
    if not values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


def summarize(run: Run) -> Summary:
    counted = [r for r in run.requests if r.outcome != "rejected"]
    waits = sorted(r.wait for r in counted)
    by_model = dict.fromkeys(run.workload.models, 0.0)
    for request in counted:
        by_model[request.job.model] = max(by_model[request.job.model], request.wait)
    outcomes = [r.outcome for r in run.requests]
    return Summary(
        policy=run.policy,
        workload=run.workload.name,
        models=len(run.workload.models),
        requests=len(run.requests),
        served=outcomes.count("served"),
        cut=outcomes.count("cut"),
        timed_out=outcomes.count("timeout"),
        rejected=outcomes.count("rejected"),
        unserved=outcomes.count("unserved"),
        switches=len(run.switches),
        serving_secs=run.gpu["serving"],
        switching_secs=run.gpu["switching"],
        idle_secs=run.gpu["idle"],
        wait_p50=percentile(waits, 0.50),
        wait_p95=percentile(waits, 0.95),
        wait_p99=percentile(waits, 0.99),
        wait_max=waits[-1] if waits else 0.0,
        wait_mean=sum(waits) / len(waits) if waits else 0.0,
        max_wait_by_model=by_model,
    )


_ROWS: list[tuple[str, str]] = [
    ("requests", "requests"),
    ("switches", "switches"),
    ("GPU serving (s)", "serving_secs"),
    ("GPU switching (s)", "switching_secs"),
    ("GPU idle (s)", "idle_secs"),
    ("serving / busy", "serving_share"),
    ("wait p50 (s)", "wait_p50"),
    ("wait p95 (s)", "wait_p95"),
    ("wait p99 (s)", "wait_p99"),
    ("wait max (s)", "wait_max"),
    ("wait mean (s)", "wait_mean"),
]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def render_text(summaries: Sequence[Summary], heading: str) -> str:
    """Policies side by side, one row per number."""
    table: list[list[str]] = [["", *(s.policy for s in summaries)]]
    for label, name in _ROWS:
        values = [getattr(s, name) for s in summaries]
        cells = [f"{v:.0%}" for v in values] if name == "serving_share" else map(_cell, values)
        table.append([label, *cells])
    for model in summaries[0].max_wait_by_model if summaries else ():
        table.append(
            [f"wait max {model} (s)", *(_cell(s.max_wait_by_model[model]) for s in summaries)]
        )
    outcome = "served/cut/timeout/rejected/unserved"
    table.append(
        [
            outcome,
            *(f"{s.served}/{s.cut}/{s.timed_out}/{s.rejected}/{s.unserved}" for s in summaries),
        ]
    )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [heading]
    for row in table:
        label, *cells = row
        lines.append(
            "  ".join(
                [
                    label.ljust(widths[0]),
                    *(c.rjust(w) for c, w in zip(cells, widths[1:], strict=True)),
                ]
            )
        )
    return "\n".join(lines) + "\n"


def render_csv(summaries: Sequence[Summary]) -> str:
    """One row per policy; per-model maximum waits as `wait_max:<model>` columns."""
    rows = [_flat(s) for s in summaries]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _flat(summary: Summary) -> dict[str, Any]:
    row = summary.as_dict()
    for model, wait in row.pop("max_wait_by_model").items():
        row[f"wait_max:{model}"] = wait
    return row


def render_json(summaries: Sequence[Summary], scenario: dict[str, Any]) -> str:
    document = {"scenario": scenario, "results": [s.as_dict() for s in summaries]}
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
