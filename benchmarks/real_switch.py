"""Switch cost with a real engine: tiny-a <-> tiny-b through aiollmux and the `llamacpp` preset.

Starts `python -m aiollmux run` (a subprocess) on a generated config whose two models are the
tiny GGUF models of scripts/make-tiny-gguf served by the llama-server of
scripts/build-llama-server, then sends one-token chat requests alternately to each model:
every request after the first is a switch (sleep one llama-server, start the other, wait for
its /health). Prints p50 and max of the request times over N switches, and the daemon's own
measure of each switch (`switch_costs` in /admin/status).

    python benchmarks/real_switch.py [--switches 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

LLAMA_CPP_PYTHON = "0.3.16"  # scripts/build-llama-server's VERSION


def _cache() -> Path:
    return Path(os.environ.get("AIOLLMUX_CACHE") or Path.home() / ".cache" / "aiollmux")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(tmp: Path, binary: Path, port: int) -> Path:
    text = f"port = {port}\nalive_interval_secs = 0\n[policy]\nrequest_timeout_secs = 120\n"
    for name in ("tiny-a", "tiny-b"):
        model = _cache() / "models" / f"{name}.gguf"
        if not model.is_file():
            sys.exit(f"no {model}: run scripts/make-tiny-gguf")
        text += (
            f'\n[models."{name}"]\nport = {_free_port()}\npreset = "llamacpp"\n'
            f'[models."{name}".env]\nLLAMA_SERVER_BIN = "{binary}"\n'
            f'LLAMA_MODEL_PATH = "{model}"\nLLAMA_ARGS = "--alias {name} -c 8192 -t 2"\n'
            f'AIOLLMUX_RUN_DIR = "{tmp / "run"}"\n'
        )
    path = tmp / "llmux.toml"
    path.write_text(text)
    return path


async def _wait_healthy(session: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                async with session.get(url + "/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)


async def _chat(session: aiohttp.ClientSession, url: str, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    started = time.perf_counter()
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        await response.read()
        if response.status != 200:
            raise SystemExit(f"{model}: HTTP {response.status}")
    return time.perf_counter() - started


def _hook_durations(log: Path) -> dict[str, list[float]]:
    """The wake and sleep hooks' durations, from the daemon's `hook_completed` events."""
    durations: dict[str, list[float]] = {"wake": [], "sleep": []}
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("event") == "hook_completed" and event.get("hook") in durations:
            durations[event["hook"]].append(float(event["duration"]))
    return durations


async def measure(switches: int) -> dict[str, Any]:
    binary = Path(
        os.environ.get("LLAMA_SERVER_BIN")
        or _cache() / f"llama-server-{LLAMA_CPP_PYTHON}" / "llama-server"
    )
    if not os.access(binary, os.X_OK):
        sys.exit(f"no llama-server at {binary}: run scripts/build-llama-server")
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        port = _free_port()
        config = _config(tmp, binary, port)
        url = f"http://127.0.0.1:{port}"
        log = tmp / "daemon.log"
        with log.open("wb") as output:
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "aiollmux", "run", "-c", str(config),
                "--log-format", "json",
                stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output,
                start_new_session=True,
            )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as session:
                await _wait_healthy(session, url)
                await _chat(session, url, "tiny-a")  # idle -> tiny-a: not a switch
                times = [
                    await _chat(session, url, ("tiny-b", "tiny-a")[i % 2]) for i in range(switches)
                ]
                async with session.get(url + "/admin/status") as response:
                    status = await response.json()
                async with session.post(url + "/admin/sleep") as response:
                    await response.read()
        finally:
            if daemon.returncode is None:
                os.killpg(daemon.pid, signal.SIGTERM)
                await daemon.wait()
        hooks = _hook_durations(log)
    costs = [float(entry["seconds"]) for entry in status.get("switch_costs", [])]
    medians = {hook: statistics.median(times) for hook, times in hooks.items() if times}
    return {
        "switches": switches,
        "request_p50_secs": statistics.median(times),
        "request_max_secs": max(times),
        "request_secs": times,
        "daemon_switch_costs_secs": costs,
        "hook_p50_secs": medians,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    result = asyncio.run(measure(args.switches))
    print(
        f"tiny-a <-> tiny-b through aiollmux + llamacpp preset, {result['switches']} switches:"
        f" p50 {result['request_p50_secs']:.3f} s, max {result['request_max_secs']:.3f} s"
        " (one-token request that waits for the switch)"
    )
    hooks = ", ".join(f"{hook} {secs:.3f} s" for hook, secs in result["hook_p50_secs"].items())
    print(f"hook p50: {hooks}; load average {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
