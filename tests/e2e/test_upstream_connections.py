"""The upstream connection pool: a stale keep-alive connection is retried once."""

from __future__ import annotations

import asyncio

from tests.support import Lab, hook_commands, running_daemon

_OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 14\r\n"
    b'Connection: keep-alive\r\n\r\n{"answer": 42}'
)


class DroppingServer:
    """Answers the first request on each connection, then drops the connection silently
    when a second request arrives on it, as a backend restarted behind a pooled
    keep-alive connection does."""

    def __init__(self) -> None:
        self.connections = 0
        self.dropped = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for answered in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                if answered == 1:
                    self.dropped += 1
                    break  # the restarted backend never answers this one
                writer.write(_OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_stale_keepalive_connection_is_retried_once(lab: Lab) -> None:
    server = DroppingServer()
    await server.start()
    hooks = {"flaky": hook_commands(lab.journal.path, lab.state_dir)}
    try:
        config = lab.config(ports={"flaky": server.port}, hooks=hooks)
        async with running_daemon(config) as daemon:
            for _ in range(3):
                async with await daemon.chat("flaky") as response:
                    assert response.status == 200
                    assert await response.json() == {"answer": 42}
        # Requests 2 and 3 each met a dead pooled connection and were sent again on a
        # new one: connection 1 served request 1, 2 served 2's retry, 3 served 3's retry.
        assert server.dropped == 2
        assert server.connections == 3
    finally:
        await server.stop()
