"""A fast fake LLM backend for the benchmark: raw asyncio HTTP/1.1, one process, several ports.

It never parses JSON, so it costs the same whichever route a request took to reach it;
what a request wants is in its query string (proxies forward it untouched):

  GET  /health                    200 "ok"
  POST <any path>                 a small chat.completion; `X-Body-Bytes` = body size received
  POST <path>?stream=N            N SSE chunks (chunked encoding) as fast as the socket takes
                                  them, then `data: [DONE]`; `X-Stream-Bytes` = body size
  POST <path>?stream=N&gap=S      the same, one chunk every S seconds (a model's token pace)
  POST <path>?stream=N&hold=ID    chunk 1, then wait (bounded) for POST /release?id=ID
  POST /release?id=ID             lets every stream holding on ID go on; `{"released": n}`

Run: `python benchmarks/fast_backend.py --port 8001 --port 8002` (stops on SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from urllib.parse import parse_qs

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    },
    separators=(",", ":"),
).encode()
EVENT = (
    b"data: "
    + json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "bench",
            "choices": [{"index": 0, "delta": {"content": " token"}, "finish_reason": None}],
        },
        separators=(",", ":"),
    ).encode()
    + b"\n\n"
)
DONE = b"data: [DONE]\n\n"
EVENT_CHUNK = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
LAST_CHUNKS = b"%x\r\n%s\r\n0\r\n\r\n" % (len(DONE), DONE)
MAX_HEAD = 64 * 1024
MAX_STREAM_CHUNKS = 1_000_000
DEFAULT_HOLD_SECS = 30.0


def _response(status: str, content_type: str, body: bytes, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


class Holds:
    """Streams parked after their first chunk, by hold id."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}
        self.waiting: dict[str, int] = {}

    async def wait(self, hold: str, bound_secs: float) -> bool:
        """True if released, False if the bound ran out first."""
        event = self.events.setdefault(hold, asyncio.Event())
        self.waiting[hold] = self.waiting.get(hold, 0) + 1
        try:
            async with asyncio.timeout(bound_secs):
                await event.wait()
        except TimeoutError:
            return False
        finally:
            self.waiting[hold] -= 1
            if self.waiting[hold] == 0:
                del self.waiting[hold]
                if event.is_set():
                    self.events.pop(hold, None)
        return True

    def release(self, hold: str) -> int:
        count = self.waiting.get(hold, 0)
        self.events.setdefault(hold, asyncio.Event()).set()
        if count == 0:
            self.events.pop(hold, None)
        return count


class HttpProtocol(asyncio.Protocol):
    """One connection: keep-alive, Content-Length bodies, one request at a time."""

    def __init__(self, holds: Holds) -> None:
        self.holds = holds
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: tuple[str, str] | None = None  # (method, target) while reading a body
        self.body_left = 0
        self.body_size = 0
        self.close_after = False
        self.busy = False  # a streaming answer is being written
        self.can_write: asyncio.Event = asyncio.Event()
        self.can_write.set()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.can_write.set()
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._process()

    def _process(self) -> None:
        while not self.busy and self.transport is not None:
            if self.head is None and not self._read_head():
                return
            if self.body_left:
                take = min(self.body_left, len(self.buffer))
                del self.buffer[:take]
                self.body_left -= take
                if self.body_left:
                    return
            assert self.head is not None
            method, target = self.head
            self.head = None
            self._answer(method, target)

    def _read_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._fail("431 Request Header Fields Too Large")
            return False
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        method, target, _ = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                self._fail("501 Not Implemented")  # clients here always send Content-Length
                return False
            elif name == "connection" and value.strip().lower() == "close":
                self.close_after = True
        self.head = (method, target)
        self.body_left = self.body_size = length
        return True

    def _fail(self, status: str) -> None:
        if self.transport is not None:
            self.transport.write(_response(status, "text/plain", b"", "Connection: close\r\n"))
            self.transport.close()

    def _answer(self, method: str, target: str) -> None:
        assert self.transport is not None
        path, _, query = target.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        if path == "/release":
            released = self.holds.release(params.get("id", ""))
            body = json.dumps({"released": released}).encode()
            self.transport.write(_response("200 OK", "application/json", body))
        elif method == "GET" and path == "/health":
            self.transport.write(_response("200 OK", "text/plain", b"ok"))
        elif "stream" in params:
            count = max(1, min(int(params["stream"]), MAX_STREAM_CHUNKS))
            hold = params.get("hold")
            hold_secs = float(params.get("hold_secs", DEFAULT_HOLD_SECS))
            gap = max(0.0, float(params.get("gap", 0)))
            self.busy = True
            stream = self._stream(count, hold, hold_secs, gap)
            self.task = asyncio.get_running_loop().create_task(stream)
            return
        else:
            extra = f"X-Body-Bytes: {self.body_size}\r\n"
            self.transport.write(_response("200 OK", "application/json", COMPLETION, extra))
        if self.close_after:
            self.transport.close()

    async def _stream(self, count: int, hold: str | None, hold_secs: float, gap: float) -> None:
        total = count * len(EVENT) + len(DONE)
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            f"Transfer-Encoding: chunked\r\nX-Stream-Bytes: {total}\r\n\r\n"
        )
        try:
            self._write(head.encode() + EVENT_CHUNK)
            if hold is not None:
                await self.holds.wait(hold, hold_secs)
            for _ in range(count - 1):
                await self.can_write.wait()
                self._write(EVENT_CHUNK)
                # At least one loop turn per chunk: streams interleave, each chunk is one send.
                await asyncio.sleep(gap)
            self._write(LAST_CHUNKS)
        except ConnectionError:
            return
        finally:
            self.task = None
            self.busy = False
        if self.close_after and self.transport is not None:
            self.transport.close()
        self._process()

    def _write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the client went away")
        self.transport.write(data)


async def serve(ports: list[int], host: str) -> None:
    loop = asyncio.get_running_loop()
    holds = Holds()
    servers = [
        await loop.create_server(lambda: HttpProtocol(holds), host, port, backlog=1024)
        for port in ports
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.host))


if __name__ == "__main__":
    main()
