"""The upstream client (aiollmux/upstream.py) against scripted backends on real sockets:
framing (Content-Length, chunked at every split, until close, HEAD, 204/304, 1xx),
answers it refuses, connection reuse, the retry of a stale connection, the limit, the
keep-alive expiry and the flow control of a streamed answer."""

from __future__ import annotations

import asyncio
import gc
import itertools
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aiollmux import upstream as upstream_module
from aiollmux.upstream import (
    BadResponse,
    ConnectFailed,
    ConnectionClosed,
    Response,
    Upstream,
    UpstreamError,
    header_lines,
    request_head,
)

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
# What a backend does on each connection: (backend, reader, writer, connection number).
Script = Callable[["Backend", Reader, Writer, int], Awaitable[None]]


class Backend:
    """An asyncio server whose connections run `script(reader, writer, connection_no)`;
    it records the request heads it read (through `read_request`)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Backend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in self._writers:  # connections still open: closed before the loop ends
            writer.transport.abort()
        await asyncio.sleep(0)  # (their sockets close in a callback)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.script(self, reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body


def answering(*answers: bytes, then_close: bool = False) -> Script:
    """A script: read a request, send the next answer, for each answer on one connection."""

    async def script(backend: Backend, reader: Reader, writer: Writer, _: int) -> None:
        for answer in answers:
            await backend.read_request(reader)
            writer.write(answer)
            await writer.drain()
        if then_close:
            return
        if await reader.read(1) == b"":
            backend.closed_by_client.set()

    return script


async def backend_with(script: Script) -> Backend:
    return await Backend(script).__aenter__()


@pytest.fixture
async def pool() -> AsyncIterator[Upstream]:
    upstream = Upstream(limit=8, keepalive_secs=30, connect_secs=5)
    yield upstream
    await upstream.close()


async def fetch(pool: Upstream, backend: Backend, method: str = "POST") -> tuple[Response, bytes]:
    fields = header_lines([(b"Content-Type", b"application/json"), (b"X-Trace", b"t1")])
    response = await pool.request(backend.port, method, "/v1/chat?x=1", fields, b'{"a":1}')
    try:
        body = b"".join([chunk async for chunk in response.iter_any()])
    finally:
        response.close()
    return response, body


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def test_a_small_answer_is_read_and_its_connection_reused(pool: Upstream) -> None:
    async with Backend(answering(OK, OK, OK)) as backend:
        for _ in range(3):
            response, body = await fetch(pool, backend)
            assert (response.status, response.reason, body) == (200, "OK", b"{}")
            assert response.headers["Content-Type"] == "application/json"
            assert response.content_length == 2
        assert backend.connections == 1
        first = backend.requests[0]
        assert first.startswith(b"POST /v1/chat?x=1 HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{backend.port}\r\n".encode() in first
        assert b"X-Trace: t1\r\n" in first
        assert b"Content-Length: 7\r\n" in first
        assert first.endswith(b'\r\n\r\n{"a":1}')


async def test_read_returns_the_whole_body(pool: Upstream) -> None:
    async with Backend(answering(OK)) as backend:
        response = await pool.request(backend.port, "GET", "/", b"", b"")
        try:
            assert await response.read() == b"{}"
        finally:
            response.close()
        # A GET without a body says nothing of its length.
        assert b"Content-Length" not in backend.requests[0]


CHUNKED_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"6\r\ndata: \r\n"
    b"1A;ext=1\r\n" + b"x" * 26 + b"\r\n"
    b"c\r\n\r\n\r\ndata: [D\r\n"
    b"0\r\nX-Trailer: yes\r\n\r\n"
)
CHUNKED_BODY = b"data: " + b"x" * 26 + b"\r\n\r\ndata: [D"


async def connected_pair(
    pool: Upstream,
) -> tuple[upstream_module._Connection, socket.socket]:
    """A connection of the pool on one end of a real socket pair (the other end returned)."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    _, connection = await loop.connect_accepted_socket(
        lambda: upstream_module._Connection(pool, 0), ours
    )
    return connection, theirs


async def parse_split(
    pool: Upstream, answer: bytes, cuts: Sequence[int], *, framed: bool = False
) -> tuple[bytes, bool]:
    """Feed `answer` to a connection's parser in pieces cut at `cuts`: the body and
    whether the connection could be reused."""
    connection, other = await connected_pair(pool)
    try:
        sending = asyncio.ensure_future(
            connection.send(b"", b"", head_request=False, framed=framed)
        )
        await asyncio.sleep(0)
        bounds = [0, *cuts, len(answer)]
        for start, end in itertools.pairwise(bounds):
            connection.data_received(answer[start:end])
        response = await sending
        body = await response.read()
        return body, connection._keep_alive and connection._state == upstream_module._DONE
    finally:
        connection._abort()
        other.close()


async def test_a_chunked_answer_parses_at_every_split(pool: Upstream) -> None:
    for cut in range(1, len(CHUNKED_ANSWER)):
        body, reusable = await parse_split(pool, CHUNKED_ANSWER, [cut])
        assert body == CHUNKED_BODY, cut
        assert reusable, cut


async def test_a_chunked_answer_parses_a_byte_at_a_time(pool: Upstream) -> None:
    body, reusable = await parse_split(pool, CHUNKED_ANSWER, range(1, len(CHUNKED_ANSWER)))
    assert (body, reusable) == (CHUNKED_BODY, True)


async def test_a_content_length_answer_parses_a_byte_at_a_time(pool: Upstream) -> None:
    answer = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"
    body, reusable = await parse_split(pool, answer, range(1, len(answer)))
    assert (body, reusable) == (b"hello", True)


async def test_bytes_after_the_answer_forbid_reuse(pool: Upstream) -> None:
    body, reusable = await parse_split(pool, OK + b"HTTP/1.1 200 OK\r\n", [])
    assert (body, reusable) == (b"{}", False)
    body, reusable = await parse_split(pool, CHUNKED_ANSWER + b"junk", [])
    assert (body, reusable) == (CHUNKED_BODY, False)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\r\nok",  # bare LFs, then a CRLF blank line
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\nok",
    ],
)
async def test_bare_lf_line_ends_are_read(pool: Upstream, answer: bytes) -> None:
    for cut in range(1, len(answer)):
        assert await parse_split(pool, answer, [cut]) == (b"ok", True), cut


async def test_a_streamed_answer_arrives_as_it_is_sent(pool: Upstream) -> None:
    """Each chunk reaches `iter_any` before the backend sends the next one."""
    go_on = asyncio.Event()

    async def script(backend: Backend, reader: Reader, writer: Writer, _: int) -> None:
        await backend.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await go_on.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read(1)

    async with Backend(script) as backend:
        response = await pool.request(backend.port, "POST", "/", b"", b"{}")
        chunks = response.iter_any()
        assert await anext(chunks) == b"first"
        go_on.set()
        assert [chunk async for chunk in chunks] == [b"second"]
        assert response.content_length is None
        response.close()
        assert pool.idle_connections(backend.port) == 1


async def test_an_answer_until_close_is_read_and_not_reused(pool: Upstream) -> None:
    backend = await backend_with(
        answering(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", then_close=True)
    )
    try:
        _, body = await fetch(pool, backend)
        assert body == b"all of it"
        assert pool.idle_connections(backend.port) == 0
    finally:
        await backend.__aexit__()


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
        ("POST", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
        ("POST", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ],
)
async def test_answers_without_a_body(pool: Upstream, method: str, answer: bytes) -> None:
    async with Backend(answering(answer, OK)) as backend:
        response, body = await fetch(pool, backend, method)
        assert body == b""
        if method == "HEAD":
            assert response.content_length == 10
        # The connection is reused: the next answer is read from where this one ended.
        _, body = await fetch(pool, backend)
        assert body == b"{}"
        assert backend.connections == 1


async def test_interim_answers_are_skipped(pool: Upstream) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
    async with Backend(answering(early + b"HTTP/1.1 100 Continue\r\n\r\n" + OK)) as backend:
        response, body = await fetch(pool, backend)
        assert (response.status, body) == (200, b"{}")
        assert "Link" not in response.headers


async def test_connection_close_and_http_1_0_are_not_reused(pool: Upstream) -> None:
    for answer in (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ):
        async with Backend(answering(answer)) as backend:
            _, body = await fetch(pool, backend)
            assert body == b"{}"
            assert pool.idle_connections(backend.port) == 0
            await backend.closed_by_client.wait()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        # RFC 9112 §6.1: never both (passed on, the length would not be the body's).
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        # Not an interim answer: HTTP has no status below 100.
        b"HTTP/1.1 099 Odd\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_what_is_not_http_1_is_refused(pool: Upstream, answer: bytes) -> None:
    async with Backend(answering(answer)) as backend:
        with pytest.raises(BadResponse):
            await fetch(pool, backend)
        await backend.closed_by_client.wait()  # and the connection is closed
        assert pool.idle_connections(backend.port) == 0


async def test_an_endless_head_is_refused(pool: Upstream) -> None:
    async def script(backend: Backend, reader: Reader, writer: Writer, _: int) -> None:
        await backend.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while not writer.is_closing():
            writer.write(b"X-Filler: " + b"f" * 1000 + b"\r\n")
            await writer.drain()

    async with Backend(script) as backend:
        with pytest.raises(BadResponse, match="over 65536 bytes"):
            await fetch(pool, backend)


async def test_a_cut_body_is_an_error(pool: Upstream) -> None:
    for answer in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ):
        async with Backend(answering(answer, then_close=True)) as backend:
            response = await pool.request(backend.port, "POST", "/", b"", b"")
            with pytest.raises(ConnectionClosed):
                await response.read()
            response.close()


async def test_no_backend_is_a_connect_failure(pool: Upstream) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectFailed, match=f"cannot connect to 127.0.0.1:{port}"):
        await pool.request(port, "GET", "/", b"", b"")


async def test_a_stale_pooled_connection_is_replaced_once(pool: Upstream) -> None:
    """The backend closes the kept-alive connection as the next request goes out on it:
    the request is sent again on a new connection."""

    async def script(backend: Backend, reader: Reader, writer: Writer, n: int) -> None:
        await backend.read_request(reader)
        if n == 1:
            writer.write(OK)
            await writer.drain()
            await backend.read_request(reader)  # read, never answered: dropped
            return
        writer.write(OK)
        await writer.drain()
        await reader.read(1)

    async with Backend(script) as backend:
        assert (await fetch(pool, backend))[1] == b"{}"
        assert (await fetch(pool, backend))[1] == b"{}"
        assert backend.connections == 2
        assert len(backend.requests) == 3


async def test_a_connection_that_answered_in_part_is_not_retried(pool: Upstream) -> None:
    async def script(backend: Backend, reader: Reader, writer: Writer, n: int) -> None:
        await backend.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await backend.read_request(reader)
        writer.write(b"HTTP/1.1 200 O")  # and gone

    async with Backend(script) as backend:
        await fetch(pool, backend)
        with pytest.raises(ConnectionClosed):
            await fetch(pool, backend)
        assert backend.connections == 1


async def test_requests_beyond_the_limit_wait_for_a_connection() -> None:
    """With a limit of 1 the second request waits for the first answer to be closed and
    then reuses its connection: one connection in all."""
    pool = Upstream(limit=1)
    backend = await backend_with(answering(OK, OK))
    try:
        first = await pool.request(backend.port, "POST", "/", b"", b"")
        second = asyncio.ensure_future(fetch(pool, backend))
        assert await first.read() == b"{}"
        first.close()
        _, body = await second
        assert body == b"{}"
        assert backend.connections == 1
    finally:
        await pool.close()
        await backend.__aexit__()


async def test_idle_connections_expire() -> None:
    pool = Upstream(keepalive_secs=0.05)
    backend = await backend_with(answering(OK))
    try:
        await fetch(pool, backend)
        assert pool.idle_connections(backend.port) == 1
        await backend.closed_by_client.wait()  # the sweep closed it
        assert pool.idle_connections(backend.port) == 0
    finally:
        await pool.close()
        await backend.__aexit__()


async def test_a_slow_reader_pauses_the_backend(pool: Upstream) -> None:
    """Reading from the backend pauses while a streamed answer waits for the proxy's
    client; nothing is lost when it goes on."""
    size = 8 * 1024 * 1024

    async def script(backend: Backend, reader: Reader, writer: Writer, _: int) -> None:
        await backend.read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        for _ in range(size // 65536):
            writer.write(b"z" * 65536)
            await writer.drain()
        await reader.read(1)

    async with Backend(script) as backend:
        response = await pool.request(backend.port, "POST", "/", b"", b"")
        connection = response._connection
        for _ in range(2000):  # bounded: the backend writes until the client pauses
            if connection._reading_paused:
                break
            await asyncio.sleep(0.005)
        assert connection._reading_paused
        assert response._buffered <= upstream_module._HIGH_WATER + 256 * 1024
        total = 0
        async for chunk in response.iter_any():
            total += len(chunk)
        assert total == size
        response.close()


async def test_a_large_body_is_sent_whole(pool: Upstream) -> None:
    body = bytes(range(256)) * (12 * 1024 * 4)  # 12 MiB, written in slices

    async def script(backend: Backend, reader: Reader, writer: Writer, _: int) -> None:
        received = await backend.read_request(reader)
        answer = str(len(received)).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()
        assert received == body
        await reader.read(1)

    async with Backend(script) as backend:
        response = await pool.request(backend.port, "POST", "/", b"", body)
        assert await response.read() == str(len(body)).encode()
        response.close()


async def test_an_early_answer_stops_the_body_and_the_connection_is_not_reused(
    pool: Upstream,
) -> None:
    """A backend that refuses a large body without reading it (413 at once)."""

    async def script(backend: Backend, reader: Reader, writer: Writer, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await backend_closed.wait()

    backend_closed = asyncio.Event()
    backend = await backend_with(script)
    try:
        response = await pool.request(backend.port, "POST", "/", b"", b"b" * (64 * 1024 * 1024))
        assert response.status == 413
        response.close()
        assert pool.idle_connections(backend.port) == 0
    finally:
        backend_closed.set()
        await backend.__aexit__()


@pytest.mark.parametrize(
    "value", [b"a\r\nX-Injected: 1", b"a\nb", b"a\rb", b"a\x00b", b"a\x7fb", b"a\x1bb"]
)
def test_a_header_with_a_control_character_is_never_sent(value: bytes) -> None:
    with pytest.raises(ValueError, match="control character"):
        header_lines([(b"X-Ok", b"1"), (b"X-A", value)])


def test_headers_keep_their_bytes() -> None:
    fields = header_lines([(b"X-Name", b"caf\xc3\xa9 \xff\tx")])
    head = request_head("POST", "/p?q=1", 7, fields, 0)
    assert head == (
        b"POST /p?q=1 HTTP/1.1\r\nHost: 127.0.0.1:7\r\n"
        b"X-Name: caf\xc3\xa9 \xff\tx\r\nContent-Length: 0\r\n\r\n"
    )
    assert request_head("GET", "/", 7, b"", 0) == b"GET / HTTP/1.1\r\nHost: 127.0.0.1:7\r\n\r\n"


async def test_closing_the_pool_fails_what_is_under_way() -> None:
    pool = Upstream()
    hold = asyncio.Event()

    async def script(backend: Backend, reader: Reader, writer: Writer, _: int) -> None:
        await backend.read_request(reader)
        hold.set()
        await reader.read(1)

    async with Backend(script) as backend:
        pending = asyncio.ensure_future(pool.request(backend.port, "GET", "/", b"", b""))
        await hold.wait()
        await pool.close()
        with pytest.raises(UpstreamError):
            await pending


async def test_a_refused_body_does_not_leave_its_connection_for_the_next(pool: Upstream) -> None:
    """An error answer to a request with a body may have left the body unread: the
    connection is closed, not reused (a request without a body keeps it)."""
    refused = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}"
    async with Backend(answering(refused)) as backend:
        response, _ = await fetch(pool, backend)
        assert response.status == 400
        await backend.closed_by_client.wait()
        assert pool.idle_connections(backend.port) == 0
    backend = await backend_with(
        answering(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", OK)
    )
    try:
        response = await pool.request(backend.port, "GET", "/", b"", b"")
        response.close()
        assert response.status == 404
        assert pool.idle_connections(backend.port) == 1
    finally:
        await backend.__aexit__()


async def test_a_backend_that_answers_while_it_reads_gets_the_whole_body(pool: Upstream) -> None:
    """Full duplex: the head comes after the first MiB, the rest of the body is still sent
    (and the answer ends after the backend has read it all)."""
    size = 16 * 1024 * 1024

    async def script(backend: Backend, reader: Reader, writer: Writer, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(1024 * 1024)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
        await writer.drain()
        rest = await reader.readexactly(size - 1024 * 1024)
        writer.write(b"%08d" % (len(rest) // 1024))
        await writer.drain()
        await reader.read(1)

    async with Backend(script) as backend:
        response = await pool.request(backend.port, "POST", "/", b"", b"d" * size)
        assert await response.read() == b"%08d" % (15 * 1024)
        response.close()
        # It answered before it had the body: the connection is not trusted with another.
        assert pool.idle_connections(backend.port) == 0


async def test_a_body_until_close_cut_by_closing_the_pool_is_not_complete() -> None:
    pool = Upstream()
    backend = await backend_with(
        answering(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart")
    )
    try:
        response = await pool.request(backend.port, "POST", "/", b"", b"")
        chunks = response.iter_any()
        assert await anext(chunks) == b"part"
        await pool.close()
        with pytest.raises(UpstreamError):
            await anext(chunks)
    finally:
        await backend.__aexit__()


async def test_a_request_given_up_during_its_body_leaves_no_unread_failure(pool: Upstream) -> None:
    """Cancelled while it waits to write more of a body the backend does not read: the
    connection is closed and nothing is left for asyncio to report as never retrieved."""
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    started = asyncio.Event()
    finished = asyncio.Event()

    async def script(backend: Backend, reader: Reader, writer: Writer, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        started.set()
        await finished.wait()  # reads nothing of the body

    backend = await backend_with(script)
    try:
        request = asyncio.ensure_future(
            pool.request(backend.port, "POST", "/", b"", b"u" * (64 * 1024 * 1024))
        )
        await started.wait()
        while not request.done():  # until it waits on the socket's flow control
            connection = next(iter(pool._open))
            if connection._write_paused:
                break
            await asyncio.sleep(0.01)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        del request
        await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
        assert reported == []
    finally:
        finished.set()
        loop.set_exception_handler(None)
        await backend.__aexit__()


async def test_a_read_of_one_whole_chunk_is_checked_like_any_other(pool: Upstream) -> None:
    """A read that holds exactly one chunk takes a shorter way: same answers."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    good = head + b"5\r\nhello\r\n" + b"3;x=1\r\n, w\r\n" + b"0\r\n\r\n"
    reads = [len(head), len(head) + 10, len(head) + 10 + 12]
    assert await parse_split(pool, good, reads) == (b"hello, w", True)
    with pytest.raises(BadResponse, match="longer than its size line"):
        await parse_split(pool, head + b"5\r\nhelloXY", [len(head)])


async def test_a_connection_paused_for_a_slow_reader_reads_again_when_reused(
    pool: Upstream,
) -> None:
    """The answer ends while its reader is behind (reading paused) and the proxy closes
    it unread (its client went away): the pooled connection must read the next answer."""
    # One byte over the mark: the read that pauses reading is always the one that ends it.
    size = upstream_module._HIGH_WATER + 1
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"b" * size
    async with Backend(answering(big, OK)) as backend:
        first = await pool.request(backend.port, "POST", "/", b"", b"")
        for _ in range(2000):  # bounded: until the whole answer is in, unread
            if first._complete:
                break
            await asyncio.sleep(0.005)
        assert first._complete
        assert first._connection._reading_paused
        first.close()
        assert pool.idle_connections(backend.port) == 1
        second = await asyncio.wait_for(pool.request(backend.port, "POST", "/", b"", b""), 10)
        assert await asyncio.wait_for(second.read(), 10) == b"{}"
        second.close()
        assert backend.connections == 1


# -- a chunked body handed over still framed (for a client sent it chunked) ---------------

# CHUNKED_ANSWER's body as every HTTP/1.1 client reads it: the extension and the trailer
# gone, the sizes and data as they came.
CHUNKED_FRAMED = b"6\r\ndata: \r\n1a\r\n" + b"x" * 26 + b"\r\nc\r\n\r\n\r\ndata: [D\r\n"


def strictly_unchunked(framed: bytes) -> bytes:
    """The data of a chunked body that must be plain `SIZE CRLF data CRLF` chunks (no
    extension, no bare LF, no last chunk): any other byte fails."""
    data, at = b"", 0
    while at < len(framed):
        line_end = framed.index(b"\r\n", at)
        size_text = framed[at:line_end]
        assert re.fullmatch(rb"[0-9a-fA-F]+", size_text) is not None, size_text
        size = int(size_text, 16)
        assert size > 0
        start = line_end + 2
        data += framed[start : start + size]
        assert framed[start + size : start + size + 2] == b"\r\n"
        at = start + size + 2
    return data


async def test_a_framed_chunked_answer_is_canonical_at_every_split(pool: Upstream) -> None:
    for cut in range(1, len(CHUNKED_ANSWER)):
        assert await parse_split(pool, CHUNKED_ANSWER, [cut], framed=True) == (
            CHUNKED_FRAMED,
            True,
        ), cut
    every_byte = range(1, len(CHUNKED_ANSWER))
    assert await parse_split(pool, CHUNKED_ANSWER, every_byte, framed=True) == (
        CHUNKED_FRAMED,
        True,
    )
    assert strictly_unchunked(CHUNKED_FRAMED) == CHUNKED_BODY


async def test_a_framed_answer_writes_bare_lfs_and_extensions_anew(pool: Upstream) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = head + b"5\nhello\n3 ;a=b\r\n, w\r\n006\r\norld!\n\r\n0\nT: 1\n\n"
    expected = b"5\r\nhello\r\n3\r\n, w\r\n006\r\norld!\n\r\n"
    for cut in range(len(head), len(answer)):
        assert await parse_split(pool, answer, [cut], framed=True) == (expected, True), cut
    # One read of exactly one chunk, with an extension: the short way does not take it.
    one = head + b"3;x=1\r\nabc\r\n"
    reads = [len(head), len(one)]
    body, _ = await parse_split(pool, one + b"0\r\n\r\n", reads, framed=True)
    assert body == b"3\r\nabc\r\n"


async def test_a_framed_answer_is_checked_like_an_undone_one(pool: Upstream) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    with pytest.raises(BadResponse, match="longer than its size line"):
        await parse_split(pool, head + b"5\r\nhelloXY", [len(head)], framed=True)
    with pytest.raises(BadResponse, match="invalid chunk size line"):
        await parse_split(pool, head + b"5\r\nhello\r\nzz\r\n", [len(head)], framed=True)
    # Bytes after the answer's end: the body is whole, the connection never reused.
    body, reusable = await parse_split(pool, CHUNKED_ANSWER + b"junk", [], framed=True)
    assert (body, reusable) == (CHUNKED_FRAMED, False)


@st.composite
def chunked_answers(draw: st.DrawFn) -> tuple[bytes, bytes, list[int]]:
    """A chunked answer in any spelling the parser takes, its data, and read cuts."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = draw(st.binary(min_size=0, max_size=300))
    pieces, at = [head], 0
    while at < len(data):
        size = draw(st.integers(1, len(data) - at))
        hex_size = draw(st.sampled_from([b"%x", b"%X", b"00%x"])) % size
        extension = draw(st.sampled_from([b"", b";x=1", b' ;n="v"', b"\t"]))
        line_end, data_end = draw(st.sampled_from([(b"\r\n", b"\r\n"), (b"\n", b"\n")]))
        pieces.append(hex_size + extension + line_end + data[at : at + size] + data_end)
        at += size
    pieces.append(draw(st.sampled_from([b"0\r\n\r\n", b"0;e\r\nX-T: 1\r\n\r\n", b"0\n\n"])))
    answer = b"".join(pieces)
    cuts = draw(st.lists(st.integers(len(head), len(answer) - 1), max_size=8, unique=True))
    return answer, data, sorted(cuts)


@settings(max_examples=300, deadline=None)
@given(case=chunked_answers())
# A size line of the right length that is not the size and a CRLF (found by this test).
@example(
    case=(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\t\n\x00\n0\r\n\r\n", b"\x00", [])
)
def test_framed_and_undone_bodies_agree(case: tuple[bytes, bytes, list[int]]) -> None:
    answer, data, cuts = case

    async def both() -> tuple[tuple[bytes, bool], tuple[bytes, bool]]:
        pool = Upstream(limit=8, keepalive_secs=30, connect_secs=5)
        try:
            undone = await parse_split(pool, answer, cuts)
            framed = await parse_split(pool, answer, cuts, framed=True)
        finally:
            await pool.close()
        return undone, framed

    (undone, reusable), (framed, framed_reusable) = asyncio.run(both())
    assert undone == data
    assert strictly_unchunked(framed) == data
    assert reusable
    assert framed_reusable
