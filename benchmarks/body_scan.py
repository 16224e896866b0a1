"""What finding the model costs per large body, in process (docs/decisions.md, "Issue 15
follow-up: case-variant model keys"): `find_model` on the benchmark's own bodies
(loadgen.large_chat_body) and on the dense shapes that take the other paths of the
duplicate-key check. Median of `--repeat` runs, milliseconds.

    python benchmarks/body_scan.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial

from loadgen import large_chat_body

from aiollmux.request_body import find_model

MIB = 1024 * 1024


def _input(items: object, size: int) -> bytes:
    one = len(json.dumps(items)) + 2
    return json.dumps({"model": "m", "input": [items] * (size // one)}).encode()


def shapes() -> dict[str, bytes]:
    bodies = {
        f"{size} MiB {kind}, model {where}": large_chat_body(
            "bench-a", size * MIB, model_first=where == "first", image=kind == "image"
        )
        for size, kind, where in [
            (8, "chat", "first"),
            (8, "chat", "last"),
            (8, "image", "first"),
            (8, "image", "last"),
            (1, "chat", "first"),
            (1, "chat", "last"),
        ]
    }
    bodies["10 MiB embeddings input, short strings"] = _input("a short input", 10 * MIB)
    bodies["11 MiB embeddings input, strings with \\n"] = _input("a short\nline", 11 * MIB)
    bodies["10 MiB embeddings input, capitalised"] = _input("Open Models Input", 10 * MIB)
    bodies["12 MiB token ids"] = _input(list(range(1000, 1100)), 12 * MIB)
    for label, content in [("", "hi"), (", capitalised", "OK")]:
        message = {"role": "user", "content": content}
        bodies[f"8 MiB of small messages{label}"] = json.dumps(
            {"model": "m", "messages": [message] * (8 * MIB // 34)}
        ).encode()
    return bodies


def median_ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    for name, body in shapes().items():
        cost = median_ms(partial(find_model, body, "application/json"), args.repeat)
        print(f"{name:45} {cost:8.2f} ms")


if __name__ == "__main__":
    main()
