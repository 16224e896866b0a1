"""What the status page costs (issue 13's targets), measured, not asserted:

1. first paint of /ui/ with 20 models in headless Chromium (Performance API), target < 300 ms;
2. the daemon's CPU time serving 256 SSE streams with 5 status pages open against none,
   target < 2 % more.

    python benchmarks/status_page.py [--quick] [--json out.json]

Needs Debian's `chromium` and Playwright (`pip install -e '.[browser]'`). The daemon
(`python -m aiollmux run`, 20 models on `fast_backend.py`, `true` as every hook) runs
pinned to its own CPU where there are two; its CPU time is utime + stime from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from loadgen import Target, client_session, stream_load
from processes import Child, Pinning, cpu_seconds

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = 20
PAGES = 5
STREAMS = 256
PAINT_TARGET_MS = 300.0
CPU_TARGET = 0.02


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def daemon_config(port: int, backend_ports: Sequence[int]) -> str:
    # The stream load (loadgen.stream_load) asks for "bench-a".
    names = ["bench-a", *(f"model-{i:02d}" for i in range(1, len(backend_ports)))]
    models = "".join(
        f'\n[models."{name}"]\nport = {backend}\nwake = "true"\nsleep = "true"\n'
        f'alive = "false"\naliases = ["alias-{name}"]\n'
        for name, backend in zip(names, backend_ports, strict=True)
    )
    return f'host = "127.0.0.1"\nport = {port}\n\n[policy]\nname = "fifo"\n{models}'


async def wait_healthy(url: str, child: Child) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            if child.exited() is not None:
                raise SystemExit(f"{child.name} exited:\n{child.log_tail()}")
            try:
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"{child.name} did not start:\n{child.log_tail()}")


async def first_paint(browser: Any, url: str, loads: int) -> dict[str, float]:
    """Median first contentful paint, and the time until all 20 model rows are shown."""
    paints, shown = [], []
    for _ in range(loads):
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        await page.goto(f"{url}/ui/")
        await page.wait_for_function(
            f"document.querySelectorAll('#models tbody tr').length === {MODELS}", polling="raf"
        )
        shown.append(await page.evaluate("performance.now()"))
        paint = await page.evaluate(
            "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? -1"
        )
        paints.append(paint)
        await context.close()
    return {
        "first_contentful_paint_ms": statistics.median(paints),
        "models_shown_ms": statistics.median(shown),
        "loads": loads,
    }


async def streams_cpu(browser: Any, target: Target, rounds: int) -> dict[str, float]:
    """Daemon CPU over the same SSE load, alternating no page / 5 pages open."""
    totals = {"none": 0.0, "pages": 0.0}
    async with client_session() as session:
        for round_index in range(rounds):
            for mode in ("none", "pages") if round_index % 2 == 0 else ("pages", "none"):
                contexts = []
                if mode == "pages":
                    for _ in range(PAGES):
                        context = await browser.new_context()
                        page = await context.new_page()
                        await page.goto(f"{target.url}/ui/")
                        await page.wait_for_selector("#connection.ok")
                        contexts.append(context)
                result = await stream_load(
                    session, target, streams=STREAMS, chunks=100, gap=0.01, max_secs=60
                )
                if result.errors or result.timed_out:
                    raise SystemExit(f"stream load failed: {result}")
                totals[mode] += result.cpu_seconds or 0.0
                for context in contexts:
                    await context.close()
    extra = totals["pages"] / totals["none"] - 1 if totals["none"] else float("nan")
    return {
        "cpu_none_s": totals["none"],
        "cpu_pages_s": totals["pages"],
        "extra": extra,
        "rounds": rounds,
    }


async def run(quick: bool) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium: apt-get install chromium")
    pinning = Pinning.choose(True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="aiollmux-page-bench-") as tmp:
        workdir = Path(tmp)
        backend_ports = [free_port() for _ in range(MODELS)]
        port = free_port()
        (workdir / "bench.toml").write_text(daemon_config(port, backend_ports))
        ports = [arg for p in backend_ports for arg in ("--port", str(p))]
        backend = Child(
            "backend", [sys.executable, str(HERE / "fast_backend.py"), *ports],
            workdir / "backend.log", env=env,
        )  # fmt: skip
        daemon = Child(
            "aiollmux",
            [sys.executable, "-m", "aiollmux", "run", "-c", str(workdir / "bench.toml")],
            workdir / "aiollmux.log",
            env=env,
        )
        try:
            for child, cpu in ((backend, pinning.load_cpu), (daemon, pinning.proxy_cpu)):
                children.append(child)
                child.start(pinning, cpu)
            url = f"http://127.0.0.1:{port}"
            await wait_healthy(url, daemon)
            async with async_playwright() as playwright:
                # Before pinning ourselves: the browser (a page's user) may use every CPU.
                browser = await playwright.chromium.launch(executable_path=chromium)
                pinning.pin_self()
                paint = await first_paint(browser, url, 3 if quick else 9)
                target = Target("c", "aiollmux", url, daemon.pid)
                load = await streams_cpu(browser, target, 2 if quick else 6)
                await browser.close()
        finally:
            for child in children:
                child.stop()
    return {"pinning": pinning.describe(), "paint": paint, "cpu": load}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer loads and rounds")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if cpu_seconds(os.getpid()) is None:
        print("needs Linux /proc for CPU times", file=sys.stderr)
        return 2
    numbers = asyncio.run(run(args.quick))
    paint, cpu = numbers["paint"], numbers["cpu"]
    fcp = paint["first_contentful_paint_ms"]
    extra = cpu["extra"]
    print(f"pinning: {numbers['pinning']}")
    print(
        f"first contentful paint, {MODELS} models: {fcp:.0f} ms (median of {paint['loads']});"
        f" all rows shown at {paint['models_shown_ms']:.0f} ms;"
        f" target < {PAINT_TARGET_MS:.0f} ms: {'ok' if fcp < PAINT_TARGET_MS else 'MISS'}"
    )
    print(
        f"daemon CPU, {STREAMS} streams x 100 chunks, {cpu['rounds']} rounds each:"
        f" {cpu['cpu_none_s']:.2f} s with no page, {cpu['cpu_pages_s']:.2f} s with {PAGES}"
        f" pages open: {extra * 100:+.1f} %;"
        f" target < {CPU_TARGET * 100:.0f} %: {'ok' if extra < CPU_TARGET else 'MISS'}"
    )
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
