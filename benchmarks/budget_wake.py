"""Does a wake block the members already awake? (memory budgets, docs/design.md §8)

One aiollmux (a subprocess) with a budget group of two models on the fast fake backend:
`chat`, awake, and `embed`, whose wake hook waits for a file this script creates. The
latency of sequential requests to `chat` is measured twice, interleaved in rounds: while
the group is quiet, and while `embed`'s wake hook runs (a request for `embed` waits in its
queue the whole time). The difference of the medians is what the wake adds; target < 1 ms.

    python benchmarks/budget_wake.py            # about 20 seconds
    python benchmarks/budget_wake.py --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from bench import StartupError, free_port, wait_ready
from loadgen import JSON_HEADERS, PATH, chat_body, client_session, percentile
from processes import Child, Pinning

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGET_MS = 1.0


def config(port: int, backend_ports: tuple[int, int], gate: Path) -> str:
    wake_embed = f"while [ ! -e {gate} ]; do sleep 0.01; done"
    return (
        f'host = "127.0.0.1"\nport = {port}\nalive_interval_secs = 0\n\n'
        f"[policy]\nrequest_timeout_secs = 600\n\n[groups.default]\nmemory_gb = 12\n"
        f"\n[models.chat]\nport = {backend_ports[0]}\nmemory_gb = 8\n"
        f'wake = "true"\nsleep = "true"\nalive = "true"\n'
        f"\n[models.embed]\nport = {backend_ports[1]}\nmemory_gb = 1\n"
        f'wake = {json.dumps(wake_embed)}\nsleep = "true"\nalive = "false"\n'
    )


async def latencies(session: aiohttp.ClientSession, url: str, count: int) -> list[float]:
    body = chat_body("chat")
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        async with session.post(url + PATH, data=body, headers=JSON_HEADERS) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"chat answered {response.status}")
        seconds.append(time.perf_counter() - started)
    return seconds


async def _request_embed(session: aiohttp.ClientSession, url: str) -> None:
    async with session.post(url + PATH, data=chat_body("embed"), headers=JSON_HEADERS) as answer:
        await answer.read()
        if answer.status != 200:
            raise RuntimeError(f"embed answered {answer.status}")


async def status(session: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with session.get(url + "/admin/status") as response:
        document: dict[str, object] = await response.json()
        return document


async def measure(url: str, gate: Path, rounds: int, per_round: int) -> dict[str, list[float]]:
    phases: dict[str, list[float]] = {"quiet": [], "while embed wakes": []}
    async with client_session() as session:
        await latencies(session, url, 50)  # wake chat, warm up connections
        for _ in range(rounds):
            phases["quiet"] += await latencies(session, url, per_round)
            waking = asyncio.create_task(_request_embed(session, url))
            while True:  # until the wake hook really runs
                models = (await status(session, url))["models"]
                assert isinstance(models, dict)
                if models["embed"]["state"] == "waking":
                    break
                await asyncio.sleep(0.01)
            phases["while embed wakes"] += await latencies(session, url, per_round)
            models = (await status(session, url))["models"]
            assert isinstance(models, dict)
            if models["embed"]["state"] != "waking":
                raise RuntimeError("embed's wake ended before the measurement did")
            await asyncio.to_thread(gate.touch)
            await waking
            async with session.post(url + "/admin/sleep", json={"model": "embed"}) as answer:
                await answer.read()
            await asyncio.to_thread(gate.unlink)
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="per phase (default 1000)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    pinning = Pinning.choose(True)
    started: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="aiollmux-budget-bench-") as tmp:
        workdir = Path(tmp)
        gate = workdir / "go"
        ports = (free_port(), free_port())
        port = free_port()
        (workdir / "llmux.toml").write_text(config(port, ports, gate))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        argv_backend = [sys.executable, str(HERE / "fast_backend.py")]
        for backend_port in ports:
            argv_backend += ["--port", str(backend_port)]
        backend = Child("backend", argv_backend, workdir / "backend.log", env=env)
        daemon = Child(
            "aiollmux",
            [sys.executable, "-m", "aiollmux", "run", "-c", str(workdir / "llmux.toml")],
            workdir / "aiollmux.log",
            env=env,
        )
        try:
            for child, cpu in ((backend, pinning.load_cpu), (daemon, pinning.proxy_cpu)):
                started.append(child)
                child.start(pinning, cpu)
            url = f"http://127.0.0.1:{port}"

            async def run() -> dict[str, list[float]]:
                async with client_session() as session:
                    await wait_ready(session, daemon, url)
                per_round = max(1, args.requests // args.rounds)
                return await measure(url, gate, args.rounds, per_round)

            phases = asyncio.run(run())
        except StartupError as exc:
            print(exc, file=sys.stderr)
            return 1
        finally:
            for child in reversed(started):
                child.stop()
    print(f"pinning: {pinning.describe()}")
    print(f"{'phase':<20} {'n':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for name, values in phases.items():
        cells = [percentile(values, q) * 1000 for q in (0.5, 0.9, 0.99)]
        print(f"{name:<20} {len(values):>6} " + " ".join(f"{c:>8.3f}" for c in cells))
    added = (
        statistics.median(phases["while embed wakes"]) - statistics.median(phases["quiet"])
    ) * 1000
    verdict = "ok" if added < TARGET_MS else "MISS"
    print(f"added by the wake (median): {added:+.3f} ms (target < {TARGET_MS:g} ms) {verdict}")
    return 0 if added < TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
