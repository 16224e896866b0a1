"""The benchmark's load generator: aiohttp client workloads, each bounded by count and time.

Every function talks to one `Target` (the backend directly, the pass-through, or aiollmux)
and returns raw measurements; bench.py turns them into the table.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from processes import cpu_seconds

PATH = "/v1/chat/completions"
JSON_HEADERS = {"Content-Type": "application/json"}
CLIENT_ERRORS = (aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Target:
    key: str  # "a", "b", "c"
    name: str
    url: str  # http://127.0.0.1:PORT
    pid: int | None  # the proxy's pid (None for the backend itself)


def chat_body(model: str, *, stream: bool = False) -> bytes:
    document = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 16,
        "stream": stream,
    }
    return json.dumps(document).encode()


def large_chat_body(model: str, size: int, *, model_first: bool, image: bool = False) -> bytes:
    """A JSON body of about `size` bytes with "model" as its first or last key.

    Chat-shaped (the default): a long conversation of prose with quotes and newlines to
    escape, so a body has many short strings. `image`: one message carrying a base64
    image, so nearly all of the body is one long string.
    """
    messages: list[dict[str, object]]
    if image:
        data = base64.b64encode(bytes(range(256)) * (size * 3 // 4 // 256 + 1)).decode()
        url = "data:image/png;base64," + data[: max(0, size - 200)]
        parts = [{"type": "text", "text": "What is in this picture?"}]
        content = [*parts, {"type": "image_url", "image_url": {"url": url}}]
        messages = [{"role": "user", "content": content}]
    else:
        prose = (
            'The user pasted a log and asked "why does this fail?" -- then added:\n'
            "  step 3 of 12 ran for 4.2s, wrote 1,024 rows, and exited with status 0.\n"
        ) * 12
        one = len(json.dumps({"role": "user", "content": prose})) + 2
        messages = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": prose}
            for i in range(max(1, size // one))
        ]
    if model_first:
        document: dict[str, object] = {"model": model, "messages": messages, "max_tokens": 16}
    else:
        document = {"messages": messages, "max_tokens": 16, "model": model}
    return json.dumps(document).encode()


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=60),
        auto_decompress=False,
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


# -- non-streaming requests ------------------------------------------------------------


@dataclass(slots=True)
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu_seconds: float | None = None  # the proxy's utime + stime over the run
    latencies: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def add(self, other: LoadResult) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.seconds += other.seconds
        self.latencies.extend(other.latencies)
        if other.cpu_seconds is not None:
            self.cpu_seconds = (self.cpu_seconds or 0.0) + other.cpu_seconds

    @property
    def cpu_per_request(self) -> float | None:
        if self.cpu_seconds is None or self.requests == 0:
            return None
        return self.cpu_seconds / self.requests


async def closed_loop(
    session: aiohttp.ClientSession,
    target: Target,
    body: bytes,
    *,
    concurrency: int,
    max_requests: int,
    max_secs: float,
) -> LoadResult:
    """`concurrency` clients, each sending its next request when the last one is answered."""
    url = target.url + PATH
    result = LoadResult()
    issued = 0
    deadline = time.perf_counter() + max_secs

    async def client() -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=JSON_HEADERS) as response:
                    await response.read()
                    ok = response.status == 200
            except CLIENT_ERRORS:
                ok = False
            result.latencies.append(time.perf_counter() - started)
            result.requests += 1
            result.errors += 0 if ok else 1

    cpu_before = cpu_seconds(target.pid)
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    cpu_after = cpu_seconds(target.pid)
    if cpu_before is not None and cpu_after is not None:
        result.cpu_seconds = cpu_after - cpu_before
    return result


async def timed_request(
    session: aiohttp.ClientSession, target: Target, body: bytes
) -> tuple[float, bool]:
    """One request's latency, and whether it succeeded with the whole body delivered."""
    started = time.perf_counter()
    try:
        async with session.post(target.url + PATH, data=body, headers=JSON_HEADERS) as response:
            await response.read()
            received = response.headers.get("X-Body-Bytes")
            ok = response.status == 200 and received == str(len(body))
    except CLIENT_ERRORS:
        ok = False
    return time.perf_counter() - started, ok


# -- streaming -------------------------------------------------------------------------


@dataclass(slots=True)
class StreamResult:
    streams: int
    chunks_per_stream: int
    seconds: float = 0.0
    completed: int = 0
    errors: int = 0
    timed_out: bool = False
    first_byte: list[float] = field(default_factory=list)
    cpu_seconds: float | None = None

    @property
    def chunks_per_second(self) -> float:
        chunks = self.completed * self.chunks_per_stream
        return chunks / self.seconds if self.seconds > 0 else 0.0

    def add(self, other: StreamResult) -> None:
        self.streams += other.streams
        self.seconds += other.seconds
        self.completed += other.completed
        self.errors += other.errors
        self.timed_out = self.timed_out or other.timed_out
        self.first_byte.extend(other.first_byte)
        if other.cpu_seconds is not None:
            self.cpu_seconds = (self.cpu_seconds or 0.0) + other.cpu_seconds


async def stream_load(
    session: aiohttp.ClientSession,
    target: Target,
    *,
    streams: int,
    chunks: int,
    max_secs: float,
    gap: float = 0.0,
) -> StreamResult:
    """`streams` SSE answers at once, each `chunks` events `gap` seconds apart (0: as fast
    as the backend can write); checks that every byte arrived."""
    url = f"{target.url}{PATH}?stream={chunks}&gap={gap}"
    body = chat_body("bench-a", stream=True)
    result = StreamResult(streams, chunks)

    async def one() -> None:
        started = time.perf_counter()
        received = 0
        try:
            async with session.post(url, data=body, headers=JSON_HEADERS) as response:
                expected = int(response.headers.get("X-Stream-Bytes", "-1"))
                async for data in response.content.iter_any():
                    if received == 0:
                        result.first_byte.append(time.perf_counter() - started)
                    received += len(data)
                ok = response.status == 200 and received == expected
        except CLIENT_ERRORS:
            ok = False
        if ok:
            result.completed += 1
        else:
            result.errors += 1

    cpu_before = cpu_seconds(target.pid)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(max_secs):
            await asyncio.gather(*(one() for _ in range(streams)))
    except TimeoutError:
        result.timed_out = True
    result.seconds = time.perf_counter() - started
    cpu_after = cpu_seconds(target.pid)
    if cpu_before is not None and cpu_after is not None:
        result.cpu_seconds = cpu_after - cpu_before
    return result


async def _read_first_event(response: aiohttp.ClientResponse) -> bytes:
    seen = bytearray()
    while b"\n\n" not in seen:
        data = await response.content.readany()
        if not data:
            break
        seen += data
    return bytes(seen)


async def release(session: aiohttp.ClientSession, backend_url: str, hold: str) -> None:
    async with session.post(f"{backend_url}/release?id={hold}") as response:
        await response.read()


async def first_chunk_not_held(
    session: aiohttp.ClientSession,
    target: Target,
    backend_url: str,
    hold: str,
    *,
    wait_secs: float,
) -> bool:
    """True if chunk 1 reached us while the backend was still holding chunk 2 back.

    The backend sends chunk 2 only after our release (or after a long bound), so a proxy
    that buffers makes us wait out `wait_secs` without seeing chunk 1.
    """
    url = f"{target.url}{PATH}?stream=3&hold={hold}&hold_secs={4 * wait_secs}"
    body = chat_body("bench-a", stream=True)
    got_first = False
    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as response:
            expected = int(response.headers.get("X-Stream-Bytes", "-1"))
            try:
                async with asyncio.timeout(wait_secs):
                    seen = await _read_first_event(response)
                got_first = b"\n\n" in seen
            except TimeoutError:
                seen = b""
            await release(session, backend_url, hold)
            async with asyncio.timeout(8 * wait_secs):
                rest = await response.read()
            complete = len(seen) + len(rest) == expected
    except CLIENT_ERRORS:
        return False
    return got_first and complete


async def rss_with_open_streams(
    session: aiohttp.ClientSession,
    target: Target,
    backend_url: str,
    probe: Callable[[], float | None],
    *,
    streams: int,
    max_secs: float,
) -> tuple[float | None, int]:
    """`probe()` (the proxy's RSS) once `streams` streams are open and mid-answer.

    Returns the probe's value (None if not all streams opened in time) and how many
    streams completed correctly after the release.
    """
    hold = f"rss-{target.key}-{time.monotonic_ns()}"
    url = f"{target.url}{PATH}?stream=2&hold={hold}&hold_secs={max_secs}"
    body = chat_body("bench-a", stream=True)
    opened = 0
    all_open = asyncio.Event()

    async def one() -> bool:
        nonlocal opened
        async with session.post(url, data=body, headers=JSON_HEADERS) as response:
            expected = int(response.headers.get("X-Stream-Bytes", "-1"))
            seen = await _read_first_event(response)
            opened += 1
            if opened == streams:
                all_open.set()
            rest = await response.read()
            return len(seen) + len(rest) == expected

    tasks = [asyncio.create_task(one()) for _ in range(streams)]
    value: float | None = None
    try:
        async with asyncio.timeout(max_secs):
            await all_open.wait()
        value = probe()
    except TimeoutError:
        value = None
    finally:
        await release(session, backend_url, hold)
        done, pending = await asyncio.wait(tasks, timeout=max_secs)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    completed = sum(1 for t in done if not t.cancelled() and t.exception() is None and t.result())
    return value, completed


# -- interleaved sequential series ------------------------------------------------------


async def interleaved(
    steps: Sequence[Callable[[], Awaitable[tuple[float, bool]]]], repetitions: int
) -> tuple[list[list[float]], int]:
    """Run each step once per repetition, in rotating order; latencies per step and failures.

    Rotating spreads slow moments of a noisy machine over every series instead of one.
    """
    series: list[list[float]] = [[] for _ in steps]
    failures = 0
    for repetition in range(repetitions):
        for offset in range(len(steps)):
            index = (repetition + offset) % len(steps)
            seconds, ok = await steps[index]()
            series[index].append(seconds)
            failures += 0 if ok else 1
    return series, failures


async def sh_true_twice() -> tuple[float, bool]:
    """The floor of a switch: two `sh -c true` runs, as a hook runner starts them."""
    started = time.perf_counter()
    ok = True
    for _ in range(2):
        process = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            "true",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        await process.communicate()
        ok = ok and process.returncode == 0
    return time.perf_counter() - started, ok


async def switch_count(session: aiohttp.ClientSession, daemon_url: str) -> float:
    """Successful switches so far, from aiollmux's /metrics."""
    async with session.get(f"{daemon_url}/metrics") as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("llmux_switch_total{") and 'result="success"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
