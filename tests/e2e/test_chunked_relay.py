"""A chunked backend answer reaches an HTTP/1.1 client chunked as it came (issue 12: the
proxy no longer frames each piece again), in the one spelling every client reads: a size
line with extensions or a bare LF written anew, the trailer section left out. An HTTP/1.0
client, which has no chunked encoding, gets the data itself."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

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


async def relayed(lab: Lab, request: bytes) -> tuple[bytes, bytes]:
    """ANSWER from a raw backend, through the daemon, to a client sending `request`."""

    def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(ANSWER)

    async with (
        raw_backend(reply) as port,
        running_daemon(lab.config(ports={"chunk": port})) as daemon,
    ):
        return await exchange(daemon.url, request)


async def test_an_http_1_1_client_gets_the_chunks_as_every_client_reads_them(lab: Lab) -> None:
    head, body = await relayed(lab, REQUEST % 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head
    assert b"Content-Length" not in head
    assert body == ON_THE_WIRE


async def test_an_http_1_0_client_gets_the_data(lab: Lab) -> None:
    head, body = await relayed(lab, REQUEST % 0)
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Transfer-Encoding" not in head
    assert body == DATA


async def test_an_http_1_0_client_asking_for_keep_alive_gets_the_end_of_the_data(
    lab: Lab,
) -> None:
    """Review of issue 12: an HTTP/1.0 client has no chunked encoding, so the data of a
    chunked answer ends only when the connection closes; aiohttp's writer said nothing of
    keep-alive but kept the connection open for a client that asked for it, which then
    waited for ever for the end. The daemon closes it."""
    request = (REQUEST % 0).replace(b"Connection: close", b"Connection: keep-alive")
    head, body = await relayed(lab, request)
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"keep-alive" not in head.lower()
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


@pytest.mark.parametrize("version", [1, 0], ids=["framed", "http-1.0"])
async def test_a_drain_timeout_cuts_a_stream_whose_client_stopped_reading(
    lab: Lab, version: int
) -> None:
    """Review of issue 12: the cut closed the client's transport, and close() waits for
    the bytes buffered there to reach the client, so a handler waiting for them to drain
    (the client has stopped reading) never unwound, its model stayed in flight and the
    switch waited for ever. The cut aborts the transport: the client sees a cut stream."""
    await lab.add_backends("beta")
    piece = b"x" * 65536
    backend_blocked = asyncio.Event()

    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + b"\r\n")
        for _ in range(512):  # 32 MiB at most
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            # The daemon has stopped reading it (drain() waits): the client's socket and
            # the daemon's buffers for it are full.
            if writer.transport.get_write_buffer_size() > len(piece):
                backend_blocked.set()
            await writer.drain()

    hold = asyncio.Event()
    async with raw_backend(reply, hold=hold) as port:
        config = lab.config(policy="drain_timeout_secs = 0.3\n", ports={"chunk": port})
        async with running_daemon(config) as daemon:
            host, daemon_port = daemon.url.removeprefix("http://").split(":")
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.setblocking(False)
            await asyncio.get_running_loop().sock_connect(client, (host, int(daemon_port)))
            reader, writer = await asyncio.open_connection(sock=client, limit=4096)
            try:
                writer.write(REQUEST % version)
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                # The client reads no more; the daemon's handler waits for it to drain.
                await asyncio.wait_for(backend_blocked.wait(), 60)
                async with await asyncio.wait_for(daemon.chat("beta"), 30) as response:
                    assert (await response.json())["model"] == "beta"
                assert daemon.mux.switchers["default"].in_flight("chunk") == 0
                # What reaches the client ends cut: never with the last chunk.
                received = b""
                with contextlib.suppress(ConnectionResetError):
                    while data := await asyncio.wait_for(reader.read(1 << 20), 30):
                        received += data
                assert not received.endswith(b"0\r\n\r\n")
            finally:
                hold.set()
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
