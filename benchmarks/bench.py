"""aiollmux performance benchmark: the same work (a) straight to a fast fake backend,
(b) through a bare aiohttp pass-through proxy, (c) through aiollmux, in one run.

    python benchmarks/bench.py            # full run, about 1.5 minutes
    python benchmarks/bench.py --quick    # smoke run, about 20 s

See benchmarks/README.md for how to read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import aiohttp
from loadgen import (
    LoadResult,
    StreamResult,
    Target,
    chat_body,
    client_session,
    closed_loop,
    first_chunk_not_held,
    interleaved,
    large_chat_body,
    percentile,
    rss_with_open_streams,
    sh_true_twice,
    stream_load,
    switch_count,
    timed_request,
)
from processes import Child, Pinning, minor_faults, rss_mib, run_seconds
from wrk_load import WrkLoad, WrkResult
from wrk_load import available as wrk_available

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MIB = 1024 * 1024
READY_SECS = 30.0
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2)
RSS_LIMIT_MIB = 80.0
IDLE_CPU_LIMIT_PERCENT = 0.05  # of one CPU, all threads (issue 12)
RSS_AFTER_LIMIT_MIB = 55.0  # issue 12: after the whole run
SSE_RATE_RATIO = 0.95  # issue 12: unpaced streams' chunks/s over the pass-through's
PACED_TTFB_P99_MS = 200.0  # issue 12: 256 paced streams opened at once
# (MiB, one base64 image instead of a chat, "model" first)
BODY_CASES = (
    (1, False, True),
    (1, False, False),
    (8, False, True),
    (8, False, False),
    (8, True, False),
)


@dataclass(frozen=True, slots=True)
class StreamScenario:
    streams: int
    chunks: int  # per stream
    gap: float = 0.0  # seconds between a stream's chunks; 0 = as fast as the backend writes

    @property
    def title(self) -> str:
        pace = f"{1 / self.gap:.0f} chunks/s each" if self.gap else "as fast as possible"
        return f"SSE, {self.streams} concurrent streams x {self.chunks} chunks, {pace}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    name: str
    # Throughput is measured in short slices, a b c c b a ..., and summed per target, so a
    # noisy neighbour slows every target alike instead of whichever ran at the wrong time.
    slices: int  # non-streaming slices per target and concurrency
    slice_secs: float  # time bound of one slice
    slice_requests: int  # count bound of one slice
    warmup_requests: int
    stream_rounds: int  # streaming runs per target and scenario
    streams: tuple[StreamScenario, ...]
    stream_secs: float  # bound of one streaming run
    body_repetitions: int
    switch_repetitions: int
    hold_trials: int
    hold_wait_secs: float
    open_streams: int
    idle_secs: float
    # Before the idle window: the run's after-effects pass. In a full run that is the
    # keep-alive expiry of the connections the run left open — the bench's own client
    # closes its idle ones to each proxy after 15 s (aiohttp's default), aiollmux closes
    # its pooled backend connections after 30 s (aiollmux/proxy.py) — each ~15-20 ms of
    # CPU once for 256 connections, which is load, not what an idle daemon costs; and
    # the heap trim 2 s after the last large body (aiollmux/allocator.py).
    idle_settle_secs: float
    wrk_slices: int = 3  # wrk runs per target and concurrency, interleaved
    wrk_slice_secs: float = 3.0


FULL = Settings(
    name="full",
    slices=12,
    slice_secs=0.5,
    slice_requests=20_000,
    warmup_requests=300,
    stream_rounds=5,
    streams=(
        StreamScenario(32, 4000),
        StreamScenario(256, 400),
        StreamScenario(256, 150, gap=0.01),
    ),
    stream_secs=60.0,
    body_repetitions=30,
    switch_repetitions=100,
    hold_trials=3,
    hold_wait_secs=3.0,
    open_streams=256,
    idle_secs=10.0,
    idle_settle_secs=32.0,
)
QUICK = Settings(
    name="quick",
    slices=3,
    slice_secs=0.4,
    slice_requests=10_000,
    warmup_requests=100,
    stream_rounds=1,
    streams=(
        StreamScenario(32, 1000),
        StreamScenario(256, 100),
        StreamScenario(256, 50, gap=0.01),
    ),
    stream_secs=30.0,
    body_repetitions=11,
    switch_repetitions=25,
    hold_trials=1,
    hold_wait_secs=2.0,
    open_streams=256,
    idle_secs=3.0,
    idle_settle_secs=3.0,
    wrk_slices=1,
    wrk_slice_secs=2.0,
)


# -- the report ------------------------------------------------------------------------

Value = float | str | None


@dataclass(slots=True)
class Row:
    label: str
    values: dict[str, Value]  # by target key: "a", "b", "c"
    unit: str = ""
    digits: int = 1
    target: str = ""  # e.g. "c/b <= 1.3"
    ok: bool | None = None  # whether the target is met (None: no target)
    # Ratios measured pair by pair (by the other target's key), shown instead of c over it.
    paired: dict[str, float] = field(default_factory=dict)

    def ratio(self, over: str) -> float | None:
        if over in self.paired:
            return self.paired[over]
        c, other = self.values.get("c"), self.values.get(over)
        if isinstance(c, float) and isinstance(other, float) and other > 0 and c >= 0:
            return c / other
        return None


@dataclass(slots=True)
class Report:
    header: list[str] = field(default_factory=list)
    sections: list[tuple[str, list[Row]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def section(self, title: str) -> list[Row]:
        rows: list[Row] = []
        self.sections.append((title, rows))
        return rows


def _cell(value: Value, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio_cell(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def render(report: Report) -> str:
    widths = (48, 12, 12, 12, 7, 7)
    head = ("", "direct(a)", "passthru(b)", "aiollmux(c)", "c/a", "c/b")
    lines = [*report.header, ""]
    title = "".join(
        f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in enumerate(zip(head, widths, strict=True))
    )
    lines.append(f"{title}  target")
    for name, rows in report.sections:
        lines.append(name)
        for row in rows:
            label = f"  {row.label}" + (f" ({row.unit})" if row.unit else "")
            cells = [_cell(row.values.get(k), row.digits) for k in ("a", "b", "c")]
            ratios = [_ratio_cell(row.ratio("a")), _ratio_cell(row.ratio("b"))]
            verdict = "" if row.ok is None else ("ok" if row.ok else "MISS")
            line = f"{label:<{widths[0]}}" + "".join(
                f"{cell:>{w}}" for cell, w in zip([*cells, *ratios], widths[1:], strict=True)
            )
            lines.append(f"{line}  {row.target} {verdict}".rstrip())
    if report.notes:
        lines.append("")
        lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)


# -- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Setup:
    backend: Child
    passthrough: Child
    daemon: Child
    backend_url: str  # model bench-a's backend
    targets: tuple[Target, Target, Target]


def daemon_config(port: int, backend_ports: tuple[int, int]) -> str:
    models = "".join(
        f'\n[models.{name}]\nport = {backend_port}\nwake = "true"\nsleep = "true"\nalive = "true"\n'
        for name, backend_port in zip(("bench-a", "bench-b"), backend_ports, strict=True)
    )
    return (
        f'host = "127.0.0.1"\nport = {port}\n\n[policy]\nname = "fifo"\n'
        f"request_timeout_secs = 60\n{models}"
    )


def start_children(workdir: Path, pinning: Pinning, started: list[Child]) -> Setup:
    ports = {name: free_port() for name in ("a", "b", "pass", "daemon")}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    config = workdir / "bench.toml"
    config.write_text(daemon_config(ports["daemon"], (ports["a"], ports["b"])))
    python = sys.executable
    backend = Child(
        "backend",
        [
            python,
            str(HERE / "fast_backend.py"),
            "--port",
            str(ports["a"]),
            "--port",
            str(ports["b"]),
        ],
        workdir / "backend.log",
        env=env,
    )
    passthrough = Child(
        "passthrough",
        [
            python,
            str(HERE / "passthrough.py"),
            "--port",
            str(ports["pass"]),
            "--backend-port",
            str(ports["a"]),
        ],
        workdir / "passthrough.log",
        env=env,
    )
    daemon = Child(
        "aiollmux",
        [python, "-m", "aiollmux", "run", "-c", str(config)],
        workdir / "aiollmux.log",
        env=env,
    )
    for child, cpu in (
        (backend, pinning.load_cpu),
        (passthrough, pinning.proxy_cpu),
        (daemon, pinning.proxy_cpu),
    ):
        started.append(child)
        child.start(pinning, cpu)
    backend_url = f"http://127.0.0.1:{ports['a']}"
    targets = (
        Target("a", "direct", backend_url, None),
        Target("b", "passthrough", f"http://127.0.0.1:{ports['pass']}", passthrough.pid),
        Target("c", "aiollmux", f"http://127.0.0.1:{ports['daemon']}", daemon.pid),
    )
    return Setup(backend, passthrough, daemon, backend_url, targets)


class StartupError(Exception):
    pass


async def wait_ready(session: aiohttp.ClientSession, child: Child, url: str) -> None:
    """Poll GET /health until it answers 200 (bounded); fail early if the process died."""
    deadline = time.monotonic() + READY_SECS
    while time.monotonic() < deadline:
        if child.exited() is not None:
            raise StartupError(f"{child.name} exited:\n{child.log_tail()}")
        try:
            async with session.get(f"{url}/health", timeout=PROBE_TIMEOUT) as response:
                if response.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.05)
    raise StartupError(f"{child.name} did not answer within {READY_SECS:.0f}s:\n{child.log_tail()}")


# -- phases ----------------------------------------------------------------------------


def _run_order(targets: Sequence[Target], rounds: int) -> list[Target]:
    """a b c, c b a, a b c, ...: each target as often early as late."""
    order: list[Target] = []
    for round_ in range(rounds):
        order.extend(targets if round_ % 2 == 0 else reversed(targets))
    return order


def paired_median(slower: Sequence[float], faster: Sequence[float]) -> float:
    """Median of per-repetition differences: each pair ran back to back, so a slow moment
    of a busy machine shifts both of its members instead of one series."""
    return percentile([x - y for x, y in zip(slower, faster, strict=True)], 0.5)


def _ms(seconds: float) -> float:
    return seconds * 1000


def wrk_non_streaming(setup: Setup, settings: Settings, pinning: Pinning, report: Report) -> None:
    """Keep-alive load from wrk at three concurrencies, slices interleaved a b c c b a."""
    load = WrkLoad(chat_body("bench-a"), pinning)
    try:
        for concurrency in (1, 16, 64):
            summed = {t.key: WrkResult() for t in setup.targets}
            for target in setup.targets:  # warm-up: connections, pools
                load.run(target, connections=concurrency, seconds=1, into=WrkResult())
            for target in _run_order(setup.targets, settings.wrk_slices):
                load.run(
                    target,
                    connections=concurrency,
                    seconds=settings.wrk_slice_secs,
                    into=summed[target.key],
                )
            rows = report.section(f"non-streaming (wrk), concurrency {concurrency}")
            rate = Row("requests/s", {k: r.per_second for k, r in summed.items()}, digits=0)
            if concurrency > 1:
                ratio = rate.ratio("b")
                rate.target = "c/b >= 1.0"
                rate.ok = None if ratio is None else ratio >= 1.0
            rows.append(rate)
            rows.append(Row("latency p50", {k: _ms(r.p50) for k, r in summed.items()}, "ms", 2))
            p99 = Row("latency p99", {k: _ms(r.p99) for k, r in summed.items()}, "ms", 2)
            if concurrency > 1:
                ratio = p99.ratio("b")
                p99.target = "c/b <= 1.5"
                p99.ok = None if ratio is None else ratio <= 1.5
            rows.append(p99)
            cpu: dict[str, Value] = {
                k: None if r.cpu_per_request is None else r.cpu_per_request * 1e6
                for k, r in summed.items()
            }
            cpu_row = Row("proxy CPU per request", cpu, "us", digits=0, target="c/b <= 1.1")
            ratio = cpu_row.ratio("b")
            cpu_row.ok = None if ratio is None else ratio <= 1.1
            rows.append(cpu_row)
            failed: dict[str, Value] = {k: f"{r.errors}+{r.bad_status}" for k, r in summed.items()}
            rows.append(Row("socket errors + non-2xx", dict(failed)))
    finally:
        load.close()


async def non_streaming(
    session: aiohttp.ClientSession, setup: Setup, settings: Settings, report: Report
) -> None:
    """The Python load generator's view (where wrk is missing): it saturates before the
    proxies do at concurrency 16 on two cores, so ratios there understate the gaps."""
    body = chat_body("bench-a")
    for concurrency in (1, 16):
        summed = {t.key: LoadResult() for t in setup.targets}
        for target in setup.targets:
            await closed_loop(
                session,
                target,
                body,
                concurrency=concurrency,
                max_requests=settings.warmup_requests,
                max_secs=settings.slice_secs,
            )
        for target in _run_order(setup.targets, settings.slices):
            result = await closed_loop(
                session,
                target,
                body,
                concurrency=concurrency,
                max_requests=settings.slice_requests,
                max_secs=settings.slice_secs,
            )
            summed[target.key].add(result)
        rows = report.section(f"non-streaming, concurrency {concurrency}")
        rows.append(Row("requests/s", {k: r.per_second for k, r in summed.items()}, digits=0))
        for name, fraction in (("p50", 0.5), ("p99", 0.99)):
            latencies = {k: _ms(percentile(r.latencies, fraction)) for k, r in summed.items()}
            rows.append(Row(f"latency {name}", dict(latencies), "ms", digits=2))
        cpu: dict[str, Value] = {
            k: None if r.cpu_per_request is None else r.cpu_per_request * 1e6
            for k, r in summed.items()
        }
        cpu_row = Row("proxy CPU per request", cpu, "us", digits=0, target="c/b <= 1.3")
        ratio = cpu_row.ratio("b")
        cpu_row.ok = None if ratio is None else ratio <= 1.3
        rows.append(cpu_row)
        rows.append(Row("failed requests", {k: str(r.errors) for k, r in summed.items()}))
        rows.append(Row("requests measured", {k: str(r.requests) for k, r in summed.items()}))


async def streaming(
    session: aiohttp.ClientSession, setup: Setup, settings: Settings, report: Report
) -> None:
    for scenario in settings.streams:
        summed = {t.key: StreamResult(0, scenario.chunks) for t in setup.targets}
        rates: dict[str, list[float]] = {t.key: [] for t in setup.targets}  # by round
        for target in setup.targets:  # warm-up: as many pooled connections as streams
            await stream_load(
                session, target, streams=scenario.streams, chunks=2, max_secs=settings.stream_secs
            )
        for target in _run_order(setup.targets, settings.stream_rounds):
            result = await stream_load(
                session,
                target,
                streams=scenario.streams,
                chunks=scenario.chunks,
                gap=scenario.gap,
                max_secs=settings.stream_secs,
            )
            summed[target.key].add(result)
            rates[target.key].append(result.chunks_per_second)
        rows = report.section(scenario.title)
        for name, fraction in (("p50", 0.5), ("p99", 0.99)):
            ttfb = {k: _ms(percentile(r.first_byte, fraction)) for k, r in summed.items()}
            row = Row(f"time to first byte {name}", dict(ttfb), "ms", digits=2)
            if scenario.gap and name == "p99":  # streams opened at once at a model's pace
                row.target = f"c < {PACED_TTFB_P99_MS:.0f}"
                c = ttfb.get("c")
                row.ok = isinstance(c, float) and c < PACED_TTFB_P99_MS
            rows.append(row)
        rows.append(
            Row(
                "chunks/s, all rounds",
                {k: r.chunks_per_second for k, r in summed.items()},
                digits=0,
            )
        )
        if not scenario.gap:
            # The machine's speed drifts over a run: each round's b and c ran back to back,
            # so their ratio is compared round by round (paired), and the median ratio taken.
            rate = Row(
                "chunks/s, median round (ratios paired)",
                {k: percentile(v, 0.5) for k, v in rates.items()},
                digits=0,
                paired={
                    over: percentile(
                        [c / o for c, o in zip(rates["c"], rates[over], strict=True)], 0.5
                    )
                    for over in ("a", "b")
                    if all(o > 0 for o in rates[over])
                },
            )
            ratio = rate.ratio("b")
            rate.target = f"c/b >= {SSE_RATE_RATIO}"
            rate.ok = None if ratio is None else ratio >= SSE_RATE_RATIO
            rows.append(rate)
        cpu: dict[str, Value] = {
            k: None
            if r.cpu_seconds is None or not r.completed
            else r.cpu_seconds / (r.completed * scenario.chunks) * 1e6
            for k, r in summed.items()
        }
        rows.append(Row("proxy CPU per chunk", cpu, "us", digits=1))
        failed = {k: f"{r.errors}{' (timeout)' if r.timed_out else ''}" for k, r in summed.items()}
        rows.append(Row("failed streams", dict(failed)))


async def held_back(
    session: aiohttp.ClientSession, setup: Setup, settings: Settings, rows: list[Row]
) -> None:
    values: dict[str, Value] = {}
    for target in setup.targets:
        results = [
            await first_chunk_not_held(
                session,
                target,
                setup.backend_url,
                f"held-{target.key}-{trial}",
                wait_secs=settings.hold_wait_secs,
            )
            for trial in range(settings.hold_trials)
        ]
        values[target.key] = "yes" if all(results) else "NO"
    rows.append(
        Row(
            "chunk 1 arrives before chunk 2 is sent",
            values,
            target="c = yes",
            ok=values["c"] == "yes",
        )
    )


async def open_streams(
    session: aiohttp.ClientSession, setup: Setup, settings: Settings, rows: list[Row]
) -> None:
    rss: dict[str, Value] = {}
    completed: dict[str, Value] = {}
    for target in setup.targets[1:]:
        probe: Callable[[], float | None] = partial(rss_mib, target.pid)
        value, done = await rss_with_open_streams(
            session,
            target,
            setup.backend_url,
            probe,
            streams=settings.open_streams,
            max_secs=settings.stream_secs,
        )
        rss[target.key] = value
        completed[target.key] = f"{done}/{settings.open_streams}"
    label = f"proxy RSS, {settings.open_streams} streams open"
    row = Row(label, rss, "MiB", target=f"c <= {RSS_LIMIT_MIB:.0f}")
    c = rss.get("c")
    row.ok = isinstance(c, float) and c <= RSS_LIMIT_MIB
    rows.append(row)
    rows.append(Row("  those streams completed", completed))


async def large_bodies(
    session: aiohttp.ClientSession, setup: Setup, settings: Settings, report: Report
) -> None:
    rows = report.section("large JSON bodies, sequential requests (p50; added: paired median)")
    failures = 0
    proxies = setup.targets[1:]
    faults_before = {t.key: minor_faults(t.pid) for t in proxies}
    for size, image, model_first in BODY_CASES:
        body = large_chat_body("bench-a", size * MIB, model_first=model_first, image=image)
        steps = [partial(timed_request, session, target, body) for target in setup.targets]
        for step in steps:  # warm-up: pools, buffers
            await step()
        series, failed = await interleaved(steps, settings.body_repetitions)
        failures += failed
        p50 = {t.key: _ms(percentile(s, 0.5)) for t, s in zip(setup.targets, series, strict=True)}
        name = (
            f"{size} MiB {'image' if image else 'chat'}, model {'first' if model_first else 'last'}"
        )
        rows.append(Row(f"{name}: latency", dict(p50), "ms", digits=2))
        direct = series[0]
        added: dict[str, Value] = {
            target.key: _ms(paired_median(s, direct))
            for target, s in zip(setup.targets[1:], series[1:], strict=True)
        }
        row = Row(f"{name}: added over (a)", added, "ms", digits=2)
        if size == 8:
            ratio = row.ratio("b")
            row.target = "c/b <= 1.5"
            row.ok = None if ratio is None else ratio <= 1.5
        rows.append(row)
    requests = len(BODY_CASES) * (settings.body_repetitions + 1)
    faults: dict[str, Value] = {}
    for target in proxies:
        before, after = faults_before[target.key], minor_faults(target.pid)
        faults[target.key] = (
            None if before is None or after is None else (after - before) / requests
        )
    # Fresh pages for each large body (a heap given back to the OS and taken again) cost
    # milliseconds per 8 MiB on a VM: this row tells that apart from parsing work.
    rows.append(Row("proxy minor page faults per request", faults, digits=0))
    if failures:
        report.notes.append(f"{failures} large-body requests failed or lost bytes")


async def switching(
    session: aiohttp.ClientSession, setup: Setup, settings: Settings, report: Report
) -> None:
    daemon = setup.targets[2]
    active = ["bench-a"]  # every request so far named bench-a

    async def same_model() -> tuple[float, bool]:
        return await timed_request(session, daemon, chat_body(active[0]))

    async def other_model() -> tuple[float, bool]:
        active[0] = "bench-b" if active[0] == "bench-a" else "bench-a"
        return await timed_request(session, daemon, chat_body(active[0]))

    before = await switch_count(session, daemon.url)
    series, failures = await interleaved(
        [same_model, other_model, sh_true_twice], settings.switch_repetitions
    )
    switches = await switch_count(session, daemon.url) - before
    same, switched, floor = (percentile(s, 0.5) for s in series)
    added = paired_median(series[1], series[0])
    rows = report.section("switching, `true` hooks, sequential requests (aiollmux only, p50)")
    rows.append(Row("request, same model", {"c": _ms(same)}, "ms", digits=2))
    rows.append(Row("request that switches models", {"c": _ms(switched)}, "ms", digits=2))
    rows.append(Row("added per switch (paired)", {"c": _ms(added)}, "ms", digits=2))
    ratio = added / floor if floor > 0 else float("nan")
    rows.append(
        Row(
            "floor: two `sh -c true` (bench process)",
            {"c": _ms(floor)},
            "ms",
            digits=2,
        )
    )
    rows.append(
        Row(
            "added per switch / floor",
            {"c": ratio},
            "x",
            digits=2,
            target="<= 2",
            ok=ratio <= 2,
        )
    )
    expected = settings.switch_repetitions
    rows.append(Row("switches counted in /metrics", {"c": f"{switches:.0f}/{expected}"}))
    if failures:
        report.notes.append(f"{failures} switching-phase requests failed")


async def idle(setup: Setup, settings: Settings, rows: list[Row]) -> None:
    proxies = setup.targets[1:]
    await asyncio.sleep(settings.idle_settle_secs)  # the run's after-effects pass first
    before = {t.key: run_seconds(t.pid) for t in proxies}
    await asyncio.sleep(settings.idle_secs)  # the measurement window itself
    used: dict[str, Value] = {}
    for target in proxies:
        start, end = before[target.key], run_seconds(target.pid)
        used[target.key] = (
            None if start is None or end is None else 100 * (end - start) / settings.idle_secs
        )
    row = Row(f"proxy CPU while idle {settings.idle_secs:.0f} s", used, "%", digits=3)
    c = used.get("c")
    row.target = f"c <= {IDLE_CPU_LIMIT_PERCENT}"
    row.ok = isinstance(c, float) and c <= IDLE_CPU_LIMIT_PERCENT
    rows.append(row)
    rss = {t.key: rss_mib(t.pid) for t in proxies}
    after = Row("proxy RSS idle, after the run", dict(rss), "MiB")
    after.target = f"c <= {RSS_AFTER_LIMIT_MIB:.0f}"
    c = rss.get("c")
    after.ok = isinstance(c, float) and c <= RSS_AFTER_LIMIT_MIB
    rows.append(after)


async def run_benchmark(setup: Setup, settings: Settings, pinning: Pinning, report: Report) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with client_session() as session:
        for child, target in zip(
            (setup.backend, setup.passthrough, setup.daemon), setup.targets, strict=True
        ):
            await wait_ready(session, child, target.url)
        body = chat_body("bench-a")
        for target in setup.targets:  # aiollmux's first request wakes bench-a
            await closed_loop(session, target, body, concurrency=4, max_requests=200, max_secs=10)
        memory = report.section("daemon resources")
        rss = {t.key: rss_mib(t.pid) for t in setup.targets[1:]}
        memory.append(Row("proxy RSS idle, after warm-up", dict(rss), "MiB"))
        if wrk_available():
            # wrk runs as a child process: off the loop, so the loop's clients stay idle.
            await asyncio.to_thread(wrk_non_streaming, setup, settings, pinning, report)
        else:
            report.notes.append("wrk not found (apt-get install wrk): Python load generator")
            await non_streaming(session, setup, settings, report)
        await streaming(session, setup, settings, report)
        held = report.section("SSE chunks are not held back")
        await held_back(session, setup, settings, held)
        await open_streams(session, setup, settings, memory)
        await large_bodies(session, setup, settings, report)
        await switching(session, setup, settings, report)
        await idle(setup, settings, memory)
    # Resources last in the table, next to the other single-number checks.
    report.sections.append(report.sections.pop(0))


def as_records(report: Report) -> list[dict[str, object]]:
    """The table as JSON-ready records, one a row, ratios included."""
    return [
        {"section": title, **asdict(row), "c/a": row.ratio("a"), "c/b": row.ratio("b")}
        for title, rows in report.sections
        for row in rows
    ]


def _revision() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def header(settings: Settings, pinning: Pinning) -> list[str]:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return [
        f"aiollmux benchmark ({settings.name}) at {_revision()}: "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"{os.cpu_count()} CPUs, load average {load}",
        f"pinning: {pinning.describe()}",
        f"throughput: {settings.slices} interleaved slices of {settings.slice_secs} s per target "
        f"(non-streaming), {settings.stream_rounds} interleaved run(s) (SSE), summed; "
        "ratios are c over a and c over b (on a row marked paired: the median of the "
        "rounds' ratios)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="aiollmux vs a bare pass-through vs direct")
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--json", type=Path, help="also write the table's numbers here")
    args = parser.parse_args(argv)
    # Ctrl-C must reach us even when started from a shell that ignores SIGINT for us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    settings = QUICK if args.quick else FULL
    pinning = Pinning.choose(not args.no_pin)
    report = Report(header=header(settings, pinning))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aiollmux-bench-") as workdir:
        children: list[Child] = []
        try:
            setup = start_children(Path(workdir), pinning, children)
            pinning.pin_self()
            asyncio.run(run_benchmark(setup, settings, pinning, report))
        except StartupError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted; stopping the servers", file=sys.stderr)
            return 130
        finally:
            for child in reversed(children):
                child.stop()
    report.notes.append(f"wall time {time.monotonic() - started:.0f} s")
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(as_records(report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
