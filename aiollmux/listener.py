"""Accepting client connections within limits (docs/design.md §5 "Exposure and limits").

`LimitedSite` replaces aiohttp's TCPSite: it accepts in a loop of its own, so past
`max_connections` it stops accepting (new clients wait in the kernel's backlog of
`backlog`), and an accept that fails for want of fds backs off instead of spinning.
Each connection is wrapped in a `GuardedConnection`, which adds what aiohttp lacks: the
first header block within `client_header_timeout_secs`, a client that reads nothing for
`send_timeout_secs` cut (so its request is released). (`keepalive_timeout_secs` is
aiohttp's own, set on the runner.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from aiollmux.ratelimit import RateLimitedLog, is_resource_error, log_resource_error

logger = logging.getLogger(__name__)

# fds kept free for hooks (pipes, pidfds), upstream sockets and the config file.
FD_RESERVE = 64
ACCEPT_RETRY_MIN_SECS = 0.05
ACCEPT_RETRY_MAX_SECS = 1.0
ACCEPT_BATCH = 64  # connections taken at once from the backlog, as asyncio's own server does
# A header block ends with an empty line; CRLF or bare LF (the parser accepts both).
_HEADER_ENDS = (b"\r\n\r\n", b"\n\n")
_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

_limited = RateLimitedLog(logger, 10.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientLimits:
    """The limits a new connection gets (read at each accept: a reload applies to new ones).
    No defaults here: they are the config's (`server.make_site` fills them in)."""

    header_timeout: float
    send_timeout: float
    max_connections: int


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft fd limit to the hard one (docs/design.md §5); log and return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:  # e.g. above fs.nr_open
            logger.warning("cannot raise the fd limit from %d to %d: %s", soft, wanted, exc)
        else:
            soft = wanted
    logger.info(
        "file descriptor limit: soft %s, hard %s",
        _limit_text(soft),
        _limit_text(hard),
        extra={"event": "fd_limit", "soft": soft, "hard": hard},
    )
    return soft, hard


def _limit_text(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def fd_connection_cap() -> int | None:
    """The most connections the soft fd limit allows, `FD_RESERVE` kept (None: no limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else max(1, soft - FD_RESERVE)


class GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, wrapped: every call is passed on; the
    wrapper only keeps time."""

    def __init__(self, inner: RequestHandler, site: LimitedSite, limits: ClientLimits) -> None:
        self._inner = inner
        self._site = site
        self._limits = limits
        self._transport: asyncio.Transport | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes of the header block so far (an end split in two)
        self._headers_done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        # Paused (and the send timer started) as soon as any byte is left unsent, not past
        # 64 KiB: a connection closed with a few KiB a client never reads would otherwise
        # wait for it for ever, and hold its slot of max_connections (its flow control is
        # the kernel's socket buffer instead).
        transport.set_write_buffer_limits(high=0)
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._limits.header_timeout, self._header_timeout)
        self._site.opened(self)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._headers_done:
            seen = self._tail + data
            if any(end in seen for end in _HEADER_ENDS):
                self._headers_done = True
                self._cancel_header_timer()
            self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        # A client's FIN cannot be told from a full close until something is written to
        # it: like asyncio (and nginx), take it as the client leaving (docs/decisions.md).
        self._inner.eof_received()
        return None  # asyncio closes the transport

    def pause_writing(self) -> None:
        # The client does not read fast enough for the transport's buffer to drain.
        loop = asyncio.get_running_loop()
        if self._send_timer is None:
            self._send_timer = loop.call_later(self._limits.send_timeout, self._send_timeout)
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._site.closed(self)
        self._inner.connection_lost(exc)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        _limited.log(
            "header_timeout",
            logging.INFO,
            "client %s did not send its request headers within %.0fs; connection closed",
            _peer(transport),
            self._limits.header_timeout,
            extra={"event": "client_timeout", "phase": "headers"},
        )
        transport.write(_TIMEOUT_408)
        transport.close()
        # A client that does not read either: the 408 must not keep the connection open.
        self._send_timer = asyncio.get_running_loop().call_later(
            self._limits.send_timeout, self._send_timeout
        )

    def _send_timeout(self) -> None:
        self._send_timer = None
        transport = self._transport
        if transport is None:
            return
        _limited.log(
            "send_timeout",
            logging.INFO,
            "client %s read nothing for %.0fs; connection cut",
            _peer(transport),
            self._limits.send_timeout,
            extra={"event": "client_timeout", "phase": "send"},
        )
        # abort(), not close(): close() would wait for the unread bytes to be delivered.
        # Losing the connection cancels its handler, which releases its request. With
        # SO_LINGER 0 the kernel drops the unsent bytes too and resets the connection
        # (nginx's reset_timedout_connection), rather than keep offering them to a client
        # that takes none.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"


class LimitedSite(web.BaseSite):
    """A TCP listener for an aiohttp runner with the limits of docs/design.md §5."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        backlog: int,
        limits: Callable[[], ClientLimits],
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._limits = limits
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._connections: set[GuardedConnection] = set()
        self._connecting: set[asyncio.Future[None]] = set()
        self._pending = 0  # accepted, transport not made yet
        self._fd_cap: int | None = None
        self._slot_freed = asyncio.Event()

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._listeners)

    async def start(self) -> None:
        await super().start()
        self._fd_cap = fd_connection_cap()  # of the limit the daemon raised at its start
        self._listeners = _listen(self._host, self._port, self._backlog)
        for listener in self._listeners:
            name = f"accept-{listener.getsockname()[1]}"
            self._accepting.append(asyncio.create_task(self._accept_loop(listener), name=name))

    async def stop(self) -> None:
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, *self._connecting, return_exceptions=True)
        self._accepting.clear()
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        await super().stop()

    def limits_changed(self) -> None:
        """A reload may have raised `max_connections`: a paused accept loop looks again."""
        self._slot_freed.set()

    def opened(self, connection: GuardedConnection) -> None:
        self._connections.add(connection)

    def closed(self, connection: GuardedConnection) -> None:
        self._connections.discard(connection)
        self._slot_freed.set()

    def _new_connection(self) -> GuardedConnection:
        server = self._runner.server
        assert server is not None
        inner = server()
        assert isinstance(inner, RequestHandler)
        return GuardedConnection(inner, self, self._limits())

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        retry = ACCEPT_RETRY_MIN_SECS
        while True:
            await self._room_for_one()
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that client is gone already; the next one may be fine
                if is_resource_error(exc):
                    log_resource_error("accept", exc)
                else:
                    _limited.log("accept", logging.ERROR, "accept failed: %s", exc)
                # Never in a loop without a pause: the pending connection stays readable.
                await asyncio.sleep(retry)
                retry = min(retry * 2, ACCEPT_RETRY_MAX_SECS)
                continue
            retry = ACCEPT_RETRY_MIN_SECS
            self._connect(sock)
            # A burst: take what else is waiting now, without a trip through the loop each.
            for _ in range(ACCEPT_BATCH):
                if self._open() >= self.max_connections:
                    break
                try:
                    sock, _ = listener.accept()
                except OSError:  # nothing more waiting (or an error sock_accept will meet)
                    break
                sock.setblocking(False)
                self._connect(sock)

    def _connect(self, sock: socket.socket) -> None:
        self._pending += 1
        task = asyncio.ensure_future(self._make_transport(sock))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _make_transport(self, sock: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self._new_connection, sock)
        except OSError as exc:  # e.g. no memory for the transport; the client sees a reset
            sock.close()
            log_resource_error("accept", exc)
        finally:
            # Made (and counted in `_connections` by now) or failed: no longer pending.
            self._pending -= 1
            self._slot_freed.set()

    def _open(self) -> int:
        return len(self._connections) + self._pending

    @property
    def max_connections(self) -> int:
        """`max_connections`, at most the soft fd limit minus `FD_RESERVE`."""
        wanted = self._limits().max_connections
        return wanted if self._fd_cap is None else min(wanted, self._fd_cap)

    async def _room_for_one(self) -> None:
        while self._open() >= (cap := self.max_connections):
            _limited.log(
                "max_connections",
                logging.WARNING,
                "%d connections open (max_connections, at most the fd limit - %d): not "
                "accepting until one closes",
                cap,
                FD_RESERVE,
                extra={"event": "max_connections", "connections": self._open()},
            )
            self._slot_freed.clear()
            await self._slot_freed.wait()


def _listen(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets on every address `host` names, as asyncio's create_server makes them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners
