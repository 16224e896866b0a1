"""A chunked backend answer reaches an HTTP/1.1 client chunked as it came (issue 12: the
proxy no longer frames each piece again), in the one spelling every client reads: a size
line with extensions or a bare LF written anew, the trailer section left out. An HTTP/1.0
client, which has no chunked encoding, gets the data itself."""

from __future__ import annotations

import asyncio

from tests.support import Lab, raw_backend, running_daemon

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
# Extensions, a bare LF, leading zeros, upper-case hex, a trailer field.
ANSWER = (
    HEAD + b"\r\n"
    b"5\r\nhello\r\n"
    b"3;ext=1\r\n, w\r\n"
    b"6\nworld!\n"
    b"000A\r\n0123456789\r\n"
    b"0\r\nX-Trailer: gone\r\n\r\n"
)
DATA = b"hello, wworld!0123456789"
ON_THE_WIRE = b"5\r\nhello\r\n3\r\n, w\r\n6\r\nworld!\r\n000A\r\n0123456789\r\n0\r\n\r\n"
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.%d\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 17\r\nConnection: close\r\n\r\n{"model":"chunk"}'
)


async def exchange(url: str, request: bytes) -> tuple[bytes, bytes]:
    """The answer's head and everything after it, read until the daemon closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        rest = await asyncio.wait_for(reader.read(), 10)
        return head, rest
    finally:
        writer.close()
        await writer.wait_closed()


async def test_an_http_1_1_client_gets_the_chunks_as_every_client_reads_them(lab: Lab) -> None:
    def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(ANSWER)

    async with (
        raw_backend(reply) as port,
        running_daemon(lab.config(ports={"chunk": port})) as daemon,
    ):
        head, body = await exchange(daemon.url, REQUEST % 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head
    assert b"Content-Length" not in head
    assert body == ON_THE_WIRE


async def test_an_http_1_0_client_gets_the_data(lab: Lab) -> None:
    def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(ANSWER)

    async with (
        raw_backend(reply) as port,
        running_daemon(lab.config(ports={"chunk": port})) as daemon,
    ):
        head, body = await exchange(daemon.url, REQUEST % 0)
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Transfer-Encoding" not in head
    assert body == DATA


async def test_a_large_chunked_answer_reaches_a_slow_reader_whole(lab: Lab) -> None:
    """Many MiB, more than the daemon lets wait for a client: it stops reading the backend
    while the client's socket is full and goes on as the client reads."""
    piece = bytes(range(256)) * 256  # 64 KiB
    count = 96  # 6 MiB

    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + b"\r\n")
        for index in range(count):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece[index:] + piece[:index]))
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    async with (
        raw_backend(reply) as port,
        running_daemon(lab.config(ports={"chunk": port})) as daemon,
    ):
        host, daemon_port = daemon.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(daemon_port), limit=4096)
        try:
            writer.write(REQUEST % 1)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert b"Transfer-Encoding: chunked" in head
            for index in range(count):
                size = int(await asyncio.wait_for(reader.readuntil(b"\r\n"), 10), 16)
                data = await asyncio.wait_for(reader.readexactly(size + 2), 10)
                assert data == piece[index:] + piece[:index] + b"\r\n"
            assert await asyncio.wait_for(reader.read(), 10) == b"0\r\n\r\n"
        finally:
            writer.close()
            await writer.wait_closed()
