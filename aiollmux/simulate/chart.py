"""The comparison as a picture: wait p99 against the share of busy GPU time spent serving.

Plain SVG written by hand (a few dozen shapes), so the chart needs no plotting library
and is byte-for-byte reproducible: docs/policies-chart.svg is checked against it like
the table. One panel per workload; each scenario is an arrow from fifo (hollow) to
cost-aware (filled), coloured by switch cost. Up and to the right: more serving, longer
tail waits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

from aiollmux.simulate.scenario import Comparison

WIDTH, HEIGHT = 960, 380
PANEL_TOP, PANEL_HEIGHT = 58, 250
PANEL_LEFT, PANEL_WIDTH, PANEL_GAP = 64, 264, 44
WAIT_TICKS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)  # seconds, on a log scale
COLOURS = {2.0: "#1b7837", 10.0: "#2166ac", 60.0: "#b2182b"}
OTHER_COLOUR = "#555555"


def comparison_chart(runs: Sequence[Comparison]) -> str:
    workloads = list(dict.fromkeys(run.workload for run in runs))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        "<defs>",
        *(_arrow_head(colour) for colour in [*COLOURS.values(), OTHER_COLOUR]),
        "</defs>",
        _text(
            WIDTH / 2,
            22,
            "fifo (hollow) → cost-aware (filled): wait p99 against the "
            "share of busy GPU time spent serving",
            size=14,
            anchor="middle",
        ),
        _text(
            WIDTH / 2,
            40,
            "2 and 3 models (labels), four virtual hours each, seed 1",
            anchor="middle",
            colour="#444444",
        ),
    ]
    for index, workload in enumerate(workloads):
        left = PANEL_LEFT + index * (PANEL_WIDTH + PANEL_GAP)
        parts.extend(_panel(left, workload, [r for r in runs if r.workload == workload]))
    parts.extend(_legend(sorted({run.switch_cost for run in runs})))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _panel(left: float, workload: str, runs: Sequence[Comparison]) -> list[str]:
    top, bottom, right = PANEL_TOP, PANEL_TOP + PANEL_HEIGHT, left + PANEL_WIDTH
    parts = [
        f'<rect x="{left}" y="{top}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" '
        'fill="none" stroke="#999999"/>',
        _text(left + PANEL_WIDTH / 2, top - 4, workload, size=13, anchor="middle"),
    ]
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = _x(left, share)
        parts.append(_line(x, top, x, bottom, "#e5e5e5"))
        parts.append(_text(x, bottom + 15, f"{share:.0%}", anchor="middle"))
    for wait in WAIT_TICKS:
        y = _y(wait)
        parts.append(_line(left, y, right, y, "#e5e5e5"))
        parts.append(_text(left - 5, y + 4, f"{wait:g} s", anchor="end"))
    parts.append(_text(left + PANEL_WIDTH / 2, bottom + 32, "serving / busy", anchor="middle"))
    if left == PANEL_LEFT:
        middle = top + PANEL_HEIGHT / 2
        parts.append(
            f'<text x="16" y="{middle:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 16 {middle:.1f})">wait p99</text>'
        )
    for run in runs:
        colour = COLOURS.get(run.switch_cost, OTHER_COLOUR)
        x1, y1 = _x(left, run.fifo.serving_share), _y(run.fifo.wait_p99)
        x2, y2 = _x(left, run.aware.serving_share), _y(run.aware.wait_p99)
        title = (
            f"{run.workload}, {run.models} models, {run.switch_cost:g} s switches: "
            f"serving {run.fifo.serving_share:.0%} → {run.aware.serving_share:.0%}, "
            f"wait p99 {run.fifo.wait_p99:.0f} s → {run.aware.wait_p99:.0f} s"
        )
        parts.append(f"<g><title>{escape(title)}</title>")
        if math.hypot(x2 - x1, y2 - y1) > 9:  # room for an arrow between the markers
            shorten = 5 / math.hypot(x2 - x1, y2 - y1)
            parts.append(
                f'<line x1="{x1 + (x2 - x1) * shorten:.1f}" y1="{y1 + (y2 - y1) * shorten:.1f}" '
                f'x2="{x2 - (x2 - x1) * shorten:.1f}" y2="{y2 - (y2 - y1) * shorten:.1f}" '
                f'stroke="{colour}" stroke-width="1.3" marker-end="url(#head{colour[1:]})"/>'
            )
        parts.append(
            f'<circle cx="{x1:.1f}" cy="{y1:.1f}" r="4" fill="white" stroke="{colour}" '
            'stroke-width="1.5"/>'
        )
        parts.append(f'<circle cx="{x2:.1f}" cy="{y2:.1f}" r="4" fill="{colour}"/>')
        parts.append(_text(x2 + 6, y2 - 5, str(run.models), size=10, colour=colour))
        parts.append("</g>")
    return parts


def _legend(costs: Sequence[float]) -> list[str]:
    y = HEIGHT - 14
    parts = [_text(PANEL_LEFT, y, "switch cost:", colour="#444444")]
    for index, cost in enumerate(costs):
        x = PANEL_LEFT + 90 + index * 80
        colour = COLOURS.get(cost, OTHER_COLOUR)
        parts.append(f'<circle cx="{x}" cy="{y - 4}" r="4" fill="{colour}"/>')
        parts.append(_text(x + 8, y, f"{cost:g} s", colour=colour))
    return parts


def _arrow_head(colour: str) -> str:
    return (
        f'<marker id="head{colour[1:]}" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
        f'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="{colour}"/></marker>'
    )


def _x(left: float, share: float) -> float:
    return left + min(max(share, 0.0), 1.0) * PANEL_WIDTH


def _y(wait: float) -> float:
    """Log scale from the first tick to the last; shorter waits sit on the bottom edge."""
    low, high = math.log10(WAIT_TICKS[0]), math.log10(WAIT_TICKS[-1])
    position = (math.log10(max(wait, WAIT_TICKS[0])) - low) / (high - low)
    return PANEL_TOP + PANEL_HEIGHT * (1 - min(position, 1.0))


def _line(x1: float, y1: float, x2: float, y2: float, colour: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}"/>'


def _text(
    x: float,
    y: float,
    text: str,
    *,
    size: int = 12,
    anchor: str = "start",
    colour: str = "#222222",
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'fill="{colour}">{escape(text)}</text>'
    )
