"""The client side of the proxy: HTTP/1.1 to the backends on 127.0.0.1 (docs/design.md §4).

One pool of keep-alive connections per backend port; each connection is an asyncio
protocol that writes a request in one go and reads the answer itself: the status line and
headers, then the body as its framing says (Content-Length, chunked, or until the backend
closes). It does only what a proxy to a local backend needs — no redirects, cookies,
proxies, TLS or decompression — and costs ~180 µs less CPU per request than aiohttp's
general client (docs/decisions.md, "Issue 12: the upstream client").

A connection goes back to its pool only after a complete answer, framed so that nothing is
left over, on a connection both sides keep alive; anything else closes it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable

from multidict import CIMultiDict, CIMultiDictProxy

HOST = "127.0.0.1"
# A status line and headers larger than this are not an answer we pass on.
MAX_HEAD_BYTES = 64 * 1024
# A chunk-size line (with extensions) or trailer line longer than this is refused.
_MAX_LINE = 8 * 1024
# Reading from the backend pauses while this much of a streamed answer waits for the client.
_HIGH_WATER = 256 * 1024
# A large request body is written in slices of this size (3.11's transport copies the
# part of a write the socket does not take at once).
_WRITE_SLICE = 1024 * 1024
# A request body up to this size is written together with the request's head.
_ONE_WRITE = 64 * 1024

# The blank line that ends a head; a line may end in CRLF or a bare LF (RFC 9112 §2.2).
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS_LINE = re.compile(r"HTTP/1\.([01]) ([0-9]{3})(?: ([^\n]*))?")
# Field names, one a line: tokens (RFC 9110 §5.6.2).
_FIELD_NAMES = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:\n[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
# RFC 9110 §5.5: control characters other than HTAB are not allowed in field values.
_FORBIDDEN_IN_HEAD = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A chunk-size line, extensions and all (RFC 9112 §7.1.1), up to its line end.
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]{0,4096})?\r?\n")
_BODYLESS_STATUS = frozenset({204, 304})
_FRAMING = frozenset({"connection", "content-length", "transfer-encoding"})
# Methods whose requests carry a Content-Length even when their body is empty.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class UpstreamError(Exception):
    """The backend could not be reached, or did not answer in HTTP/1.x."""


class ConnectFailed(UpstreamError):
    """No connection to the backend's port (nothing was sent)."""


class ConnectionClosed(UpstreamError):
    """The backend closed the connection before its answer was complete."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered  # did any byte of an answer arrive?


class BadResponse(UpstreamError):
    """What the backend sent is not an HTTP/1.x answer this proxy can pass on."""


class Response:
    """A backend's answer: the head at once, the body as it arrives (`read`, `iter_any`).
    `close()` hands a finished connection back to its pool and aborts an unfinished one;
    it must be called once the answer is done with, whatever happened."""

    def __init__(
        self,
        connection: _Connection,
        status: int,
        reason: str,
        fields: list[tuple[str, str]],
        content_length: int | None,
        connection_tokens: set[str],
        *,
        framed: bool = False,
    ) -> None:
        self.status = status
        self.reason = reason
        self.fields = fields  # the header fields in their order, names as sent
        # The body's length when the backend framed it with Content-Length, else None.
        self.content_length = content_length
        # The lowercased tokens of its Connection header: the fields they name, too, are
        # meant for this hop only (RFC 9110 §7.6.1).
        self.connection_tokens = connection_tokens
        # The body comes as chunks, framed as the backend framed them (asked for with
        # `framed=True`; the last chunk is the reader's to write): see _chunked_data.
        self.framed = framed
        self._connection = connection
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._complete = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return CIMultiDictProxy(CIMultiDict(self.fields))

    async def read(self) -> bytes:
        """The whole body (for answers known to be small)."""
        while not self._complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive: everything received so far, each time."""
        while True:
            if self._chunks:
                data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                if not self._closed:  # (once closed, the connection may serve another)
                    self._connection.resume_reading()
                yield data
            elif self._error is not None:
                raise self._error
            elif self._complete:
                return
            else:
                await self._wait()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._complete and self._error is None:
            self._fail(ConnectionClosed("the answer was abandoned", answered=True))
        self._connection.answer_closed(self._complete)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER:
            self._connection.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if not self._complete and self._error is None:
            self._error = error
            self._wake()


# What a connection is reading.
_IDLE, _HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _DONE = range(6)
# Where it is inside a chunked body.
_SIZE_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILER = range(4)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Upstream, port: int) -> None:
        self.pool = pool
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False  # has it answered a request before this one?
        self.idle_since = 0.0
        self._state = _IDLE
        self._head_request = False
        self._keep_alive = False
        self._answered = False
        self._buffer = b""  # an incomplete head or chunk line
        self._remaining = 0  # body bytes (_LENGTH) or chunk bytes (_CHUNK_DATA) still to come
        self._chunk_state = _SIZE_LINE
        self._head_waiter: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._aborted = False  # closed by us: a body until close is then cut, not complete
        self._with_body = False  # did the request carry a body?
        self._framed = False  # is a chunked body handed over with its framing?
        self._body_sent = True  # has all of it been handed to the transport?

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._answered = True
        state = self._state
        if state == _LENGTH:
            self._length_data(data)
        elif state == _CHUNKED:
            self._chunked_data(data)
        elif state == _UNTIL_CLOSE:
            self._body(data)
        elif state == _HEAD:
            self._head_data(data)
        else:  # bytes nobody asked for: this connection cannot be trusted any more
            self._abort()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost ends what was under way

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._state == _UNTIL_CLOSE and exc is None and not self._aborted:
            self._done()  # the end of such a body (not our own abort: that cuts it)
        elif self._state not in (_IDLE, _DONE):
            reason = f": {exc}" if exc is not None else ""
            self._fail(
                ConnectionClosed(
                    f"the backend closed the connection{reason}", answered=self._answered
                )
            )
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- one request -------------------------------------------------------------------

    async def send(
        self, head: bytes, body: bytes, head_request: bool, framed: bool = False
    ) -> Response:
        """Write one request and wait for its answer's head."""
        transport = self.transport
        assert transport is not None
        self._state = _HEAD
        self._head_request = head_request
        self._answered = False
        self._response = None
        self._with_body = bool(body)
        self._framed = framed
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._head_waiter = waiter
        if len(body) <= _ONE_WRITE:
            transport.write(head + body)
            self._body_sent = True
        else:
            self._body_sent = False
            transport.write(head)
            await self._write_slices(body)
        return await waiter

    async def _write_slices(self, body: bytes) -> None:
        """A large body, a slice at a time as the socket takes them. The backend may answer
        meanwhile and still read the rest (full duplex): writing goes on until its answer is
        complete or has failed."""
        view = memoryview(body)
        for start in range(0, len(view), _WRITE_SLICE):
            while self._write_paused and not self._writing_moot():
                self._drain_waiter = asyncio.get_running_loop().create_future()
                await self._drain_waiter
            if self._writing_moot():
                self._keep_alive = False  # the backend did not take the whole body
                return
            assert self.transport is not None
            self.transport.write(view[start : start + _WRITE_SLICE])
        self._body_sent = True

    def _writing_moot(self) -> bool:
        return self.closed or self.transport is None or self._state == _DONE

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._drain_waiter = None

    def answer_closed(self, complete: bool) -> None:
        """The proxy is done with the answer: reuse the connection or close it."""
        if complete and self._state == _DONE and self._keep_alive and not self.closed:
            self._state = _IDLE
            self._response = None
            self.reused = True
            # The answer may have ended while its reader was behind (reading paused):
            # the next request must find the connection reading again.
            self.resume_reading()
            self.pool.release(self)
        else:
            self._abort()
            self.pool.release(None)

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def abandon(self) -> None:
        """Close it for a request given up on (cancelled, failed): nobody waits for its
        answer any more, so the failure to come is not set on a future nobody reads."""
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.cancel()
        self._head_waiter = None
        self._abort()

    def _abort(self) -> None:
        self._keep_alive = False
        self._aborted = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: UpstreamError) -> None:
        self._keep_alive = False
        self._wake_drain()
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(error)
            self._head_waiter = None
        if self._response is not None:
            self._response._fail(error)

    def _bad(self, message: str) -> None:
        self._fail(BadResponse(message))
        self._state = _DONE
        self._abort()

    # -- the answer's head -------------------------------------------------------------

    def _head_data(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = _HEAD_END.search(buffer)
            if end is None:
                if len(buffer) > MAX_HEAD_BYTES:
                    self._bad(f"the backend's response head is over {MAX_HEAD_BYTES} bytes")
                else:
                    self._buffer = buffer
                return
            if end.start() > MAX_HEAD_BYTES:
                self._bad(f"the backend's response head is over {MAX_HEAD_BYTES} bytes")
                return
            rest = buffer[end.end() :]
            if not self._take_head(buffer[: end.start()]):
                return
            if self._state != _HEAD:  # a final answer: the rest is its body
                self._buffer = b""
                if rest:
                    self.data_received(rest)
                return
            buffer = rest  # an interim (1xx) answer was skipped: the next head follows

    def _take_head(self, raw: bytes) -> bool:
        text = raw.decode("utf-8", "surrogateescape")
        if "\r" in text:
            text = text.replace("\r\n", "\n")  # a CR left is a control character below
        if _FORBIDDEN_IN_HEAD.search(text) is not None:
            self._bad("the backend's response head has control characters")
            return False
        status_line, _, field_text = text.partition("\n")
        status = _STATUS_LINE.fullmatch(status_line)
        if status is None:
            self._bad(f"the backend did not answer in HTTP/1.x: {status_line[:80]!r}")
            return False
        version, code_text, reason = status.groups()
        code = int(code_text)
        fields: list[tuple[str, str]] = []
        framing: dict[str, list[str]] = {}  # the fields that frame the body, by lower name
        if field_text:
            names: list[str] = []
            for line in field_text.split("\n"):
                name, colon, value = line.partition(":")
                if not colon:
                    self._bad(f"the backend sent a malformed header line: {line[:80]!r}")
                    return False
                names.append(name)
                value = value.strip(" \t")
                fields.append((name, value))
                lower = name.lower()
                if lower in _FRAMING:
                    framing.setdefault(lower, []).append(value)
            # Every name a token (no space before the colon, no folded line), checked at once.
            if _FIELD_NAMES.fullmatch("\n".join(names)) is None:
                self._bad(f"the backend sent a malformed header name in {field_text[:80]!r}")
                return False
        if code < 100:
            self._bad(f"the backend answered with status {code_text}, which HTTP does not have")
            return False
        if code < 200:
            if code == 101:
                self._bad("the backend switched protocols, which this proxy does not pass on")
                return False
            return True  # 100, 103: interim answers, skipped
        return self._start_body(version, code, reason or "", fields, framing)

    def _start_body(
        self,
        version: str,
        code: int,
        reason: str,
        fields: list[tuple[str, str]],
        framing: dict[str, list[str]],
    ) -> bool:
        """Decide the body's framing (RFC 9112 §6.3) and hand the head over."""
        connection = connection_tokens(framing.get("connection", ()))
        self._keep_alive = (
            ("close" not in connection if version == "1" else "keep-alive" in connection)
            # Answered before the request's body was all sent, or refused a body (it may
            # not have been read, and its bytes would be taken for the next request).
            and self._body_sent
            and not (self._with_body and code >= 400)
            and (self.transport is None or self.transport.get_write_buffer_size() == 0)
        )
        lengths = framing.get("content-length")
        content_length: int | None = None
        if lengths is not None:
            # RFC 9110 §8.6: repeated values are allowed only when they are all the same.
            values = {_int_or_none(v) for value in lengths for v in value.split(",")}
            if len(values) != 1 or None in values:
                self._bad("the backend sent an invalid Content-Length")
                return False
            content_length = values.pop()
        codings = framing.get("transfer-encoding")
        if codings is not None and lengths is not None:
            # RFC 9112 §6.1: a sender must not send both; a proxy passing such an answer
            # on would hand the client a length that is not its body's.
            self._bad("the backend sent both Transfer-Encoding and Content-Length")
            return False
        if self._head_request or code in _BODYLESS_STATUS:
            self._state = _DONE
        elif codings is not None:
            content_length = None
            if codings[-1].split(",")[-1].strip().lower() == "chunked":
                self._state = _CHUNKED
                self._chunk_state = _SIZE_LINE
            else:
                self._state = _UNTIL_CLOSE
                self._keep_alive = False
        elif content_length is not None:
            self._remaining = content_length
            self._state = _LENGTH if content_length else _DONE
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
        response = self._response = Response(
            self,
            code,
            reason,
            fields,
            content_length,
            connection,
            framed=self._framed and self._state == _CHUNKED,
        )
        if self._state == _DONE:
            self._done()
        waiter = self._head_waiter
        self._head_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        return True

    # -- the answer's body -------------------------------------------------------------

    def _body(self, data: bytes) -> None:
        if self._response is not None:
            self._response._feed(data)

    def _length_data(self, data: bytes) -> None:
        if len(data) < self._remaining:
            self._remaining -= len(data)
            self._body(data)
            return
        if len(data) > self._remaining:  # bytes beyond the answer: never reuse
            self._keep_alive = False
            data = data[: self._remaining]
        self._remaining = 0
        self._body(data)
        self._done()

    def _done(self) -> None:
        self._state = _DONE
        if self._response is not None:
            self._response._finish()
        self._wake_drain()  # a body still being written is moot now

    def _chunked_data(self, data: bytes) -> None:
        """Chunked framing (RFC 9112 §7.1), the common steps first: a size line matched
        where it starts, the data sliced, its CRLF checked in place (an event stream
        brings dozens of chunks per read).

        Undone, the body's data is handed over. Kept (`framed`, for a client that is sent
        the body chunked too), the framing is checked and handed over with the data, as
        every HTTP/1.1 client reads it: mostly the very bytes that arrived, a size line
        with extensions or a bare LF written anew, the last chunk and trailer section
        left out (the proxy's server ends the body itself)."""
        framed = self._framed
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        elif self._chunk_state == _SIZE_LINE:
            # The commonest read of a token stream: exactly one whole chunk.
            match = _CHUNK_SIZE_LINE.match(data)
            if match is not None:
                start = match.end()
                end = start + int(match[1], 16)
                if end > start and end + 2 == len(data) and data.endswith(b"\r\n"):
                    if not framed:
                        self._body(data[start:end])
                        return
                    if _plain_size_line(data, match):
                        self._body(data)
                        return
        state = self._chunk_state
        # Framed: the bytes from `kept` on go out as they came (-1: after the last chunk,
        # nothing more does); `pieces` holds what goes out before them.
        kept = -1 if state == _TRAILER else 0
        pieces: list[bytes] = []
        at = 0
        size = len(data)
        finished = False
        while at < size:
            if state == _CHUNK_DATA:
                end = at + self._remaining
                if end <= size:
                    if not framed:
                        pieces.append(data[at:end])
                    at = end
                    self._remaining = 0
                    state = _CHUNK_END
                else:
                    if not framed:
                        pieces.append(data[at:] if at else data)
                    self._remaining = end - size
                    at = size
                continue
            if state == _CHUNK_END:
                # The data's CRLF (or a bare LF); anything else there: the chunk was longer.
                if data.startswith(b"\r\n", at):
                    at += 2
                elif data.startswith(b"\n", at):
                    at += 1
                    if framed:
                        pieces += (data[kept : at - 1], b"\r\n")
                        kept = at
                elif data[at:] == b"\r":
                    self._buffer = b"\r"
                    break
                else:
                    self._bad("the backend's chunk is longer than its size line says")
                    return
                state = _SIZE_LINE
                continue
            if state == _SIZE_LINE:
                match = _CHUNK_SIZE_LINE.match(data, at)
                if match is not None:
                    self._remaining = int(match[1], 16)
                    line_end = match.end()
                    if framed and (not self._remaining or not _plain_size_line(data, match)):
                        pieces.append(data[kept:at])
                        if self._remaining:  # a size line with extensions or a bare LF
                            pieces.append(b"%x\r\n" % self._remaining)
                            kept = line_end
                        else:  # the last chunk: the trailer section follows
                            kept = -1
                    at = line_end
                    state = _CHUNK_DATA if self._remaining else _TRAILER
                    continue
            # A line the steps above did not take: incomplete, a bare LF, or wrong.
            end = data.find(b"\n", at)
            if end == -1:
                if size - at > _MAX_LINE:
                    self._bad("the backend sent an over-long chunk line")
                    return
                self._buffer = data[at:]
                break
            line = data[at:end]
            at = end + 1
            if state == _SIZE_LINE:
                self._bad(f"the backend sent an invalid chunk size line: {line[:40]!r}")
                return
            if line in (b"", b"\r"):  # the end of the trailer section
                finished = True
                break
            if len(line) > _MAX_LINE:
                self._bad("the backend sent an over-long trailer line")
                return
        self._chunk_state = state
        if framed and kept != -1:
            # Up to `at`: what is not sent now is held in the buffer, to be read again.
            pieces.append(data if kept == 0 and at == size else data[kept:at])
        if pieces:
            body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if body:
                self._body(body)
        if finished:
            if at < size:  # bytes beyond the answer: never reuse
                self._keep_alive = False
            self._done()


def _plain_size_line(data: bytes, match: re.Match[bytes]) -> bool:
    """Is the chunk-size line `match` found just the size and a CRLF (as a client gets it)?"""
    end = match.end()
    return match.end(1) + 2 == end and data[end - 2] == 0x0D  # CR


def connection_tokens(values: Iterable[str]) -> set[str]:
    """The lowercased tokens of Connection header values (RFC 9110 §7.6.1)."""
    return {token.strip().lower() for value in values for token in value.split(",")}


def _int_or_none(value: str) -> int | None:
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


def header_lines(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Header fields as the lines of a request head. Their bytes go out as they came in
    (aiohttp's parser has checked them); a line break or other control character in one
    is refused all the same, so no field can ever add another."""
    count = 0
    lines: list[bytes] = []
    for name, value in fields:
        lines.append(name + b": " + value + b"\r\n")
        count += 1
    text = b"".join(lines)
    if (
        _CONTROL_BYTES.search(text) is not None
        or text.count(b"\n") != count
        or text.count(b"\r") != count
        or text.count(b"\r\n") != count
    ):
        raise ValueError("a header to forward has a control character")
    return text


def request_head(method: str, target: str, port: int, fields: bytes, body_length: int) -> bytes:
    """The request line and headers: `fields` from `header_lines`, then Host and the body's
    length (said even when it is 0 for a method that normally carries a body)."""
    length = (
        b"Content-Length: %d\r\n" % body_length if body_length or method in _BODY_METHODS else b""
    )
    start = f"{method} {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\n".encode(
        "utf-8", "surrogateescape"
    )
    return start + fields + length + b"\r\n"


class Upstream:
    """The pools of connections to the backends, one per port.

    `limit`: requests under way at once (waiting for a connection beyond that); idle
    connections are closed after `keepalive_secs`; connecting is bounded by `connect_secs`.
    """

    def __init__(
        self, limit: int = 1024, keepalive_secs: float = 30.0, connect_secs: float = 10.0
    ) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._keepalive_secs = keepalive_secs
        self._connect_secs = connect_secs
        self._idle: dict[int, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        port: int,
        method: str,
        target: str,
        fields: bytes,
        body: bytes,
        *,
        framed: bool = False,
    ) -> Response:
        """Send one request and return its answer once its head is in. A pooled connection
        found closed before it answered is replaced once (nothing reached the client).
        `framed`: a chunked answer's body is handed over still chunked (`Response.framed`)."""
        head = request_head(method, target, port, fields, len(body))
        for attempt in (1, 2):
            await self._slots.acquire()
            connection: _Connection | None = None
            try:
                connection = self._pooled(port) or await self._connect(port)
                return await connection.send(head, body, method == "HEAD", framed)
            except ConnectionClosed as exc:
                self._slots.release()
                stale = connection is not None and connection.reused and not exc.answered
                if attempt == 1 and stale:
                    continue  # a pooled connection the backend had closed meanwhile
                raise
            except BaseException:
                self._slots.release()
                if connection is not None:
                    connection.abandon()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _pooled(self, port: int) -> _Connection | None:
        idle = self._idle.get(port)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self, port: int) -> _Connection:
        if self._closed:
            raise ConnectFailed("the proxy is shutting down")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_secs):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, port), HOST, port
                )
        except TimeoutError:
            raise ConnectFailed(
                f"cannot connect to {HOST}:{port}: no answer in {self._connect_secs:g}s"
            ) from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {HOST}:{port}: {exc.strerror or exc}") from None
        self._open.add(connection)
        return connection

    def release(self, connection: _Connection | None) -> None:
        """An answer is done with: its slot is free, and its connection (if reusable)
        waits for the next request to the same port."""
        self._slots.release()
        if connection is None:
            return
        if self._closed:
            connection._abort()
            return
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        self._idle.setdefault(connection.port, []).append(connection)
        if self._sweep is None:
            self._sweep = loop.call_later(self._keepalive_secs, self._close_expired)

    def forget(self, connection: _Connection) -> None:
        self._open.discard(connection)

    def _close_expired(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        expired_before = loop.time() - self._keepalive_secs
        oldest: float | None = None
        for port, idle in list(self._idle.items()):
            keep: list[_Connection] = []
            for connection in idle:
                if connection.closed:
                    continue
                if connection.idle_since <= expired_before:
                    connection._abort()
                else:
                    keep.append(connection)
            if keep:
                self._idle[port] = keep
                first = keep[0].idle_since
                oldest = first if oldest is None else min(oldest, first)
            else:
                del self._idle[port]
        if oldest is not None:
            delay = max(0.0, oldest + self._keepalive_secs - loop.time())
            self._sweep = loop.call_later(delay, self._close_expired)

    def idle_connections(self, port: int) -> int:
        return sum(1 for c in self._idle.get(port, ()) if not c.closed)

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in list(self._open):
            connection._abort()
        self._idle.clear()
        await asyncio.sleep(0)  # the aborted sockets close in callbacks: let them run
