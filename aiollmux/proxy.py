"""Forwarding one request to its model's backend and streaming the answer back (docs/design.md §4).

Bytes pass through as they arrive (`iter_any()`, no buffering, no decompression); a small
reply of known length is read whole and answered in one write.
A stale keep-alive connection is retried once; a client that goes away aborts the
upstream request; a backend that fails before answering becomes a 502.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from aiollmux.admission import InFlightGuard
from aiollmux.config import ModelConfig
from aiollmux.errors import BackendError
from aiollmux.paths import request_target

logger = logging.getLogger(__name__)

# RFC 9110 §7.6.1 connection-specific headers, plus what the client library sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# `Expect: 100-continue` too: the whole body is already here, and aiohttp's client would
# wait (without a timeout) for a 100 that a backend is allowed never to send.
_SET_BY_CLIENT = frozenset({"host", "content-length", "expect"})
_RAW_BYTES_LIMIT = 1024 * 1024
# A backend reply with a Content-Length up to this is read whole and answered in one write.
SMALL_REPLY = 64 * 1024
_SKIP_AUTO_HEADERS = ("Accept-Encoding", "User-Agent", "Content-Type")
# The last event of an OpenAI-style event stream.
_STREAM_END = b"data: [DONE]\n\n"
_END_LEN = len(_STREAM_END)
# Errors that mean a pooled keep-alive connection was already dead when reused.
_STALE_CONNECTION = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def create_session(pool_size: int = 1024) -> aiohttp.ClientSession:
    """The one upstream session: explicit pool, no total timeout, bytes left encoded."""
    connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=0, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        # Generations can stream for many minutes: only connecting is bounded.
        timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10),
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=_SKIP_AUTO_HEADERS,
    )


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    return {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }


# The sets of header names dropped in each direction (computed once, not per request).
_DROP_REQUEST = HOP_BY_HOP | _SET_BY_CLIENT
_DROP_REQUEST_AND_AUTH = _DROP_REQUEST | {"authorization"}


def _filtered(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    if "Connection" in headers:  # it may name more connection-specific headers
        drop = drop | _connection_tokens(headers)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


class ClientGone(Exception):
    """The client went away mid-response (routine, logged at info as
    `client_disconnected`). The handler returns `response` quietly: aiohttp's own
    final write then meets the closed connection and says nothing."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("the client went away")
        self.response = response


class Proxy:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        self._session = create_session()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the proxy's client session is not open")
        return self._session

    async def forward(
        self,
        request: web.Request,
        model: ModelConfig,
        body: bytes,
        guard: InFlightGuard,
        *,
        drop_authorization: bool,
        decoded: bool = False,
        on_started: Callable[[int], None] | None = None,
    ) -> web.StreamResponse:
        """`decoded`: `body` is no longer the client's encoded bytes (an `upstream_model`
        rewrite of a compressed body), so its Content-Encoding goes too. `on_started` hears
        the status once it is sent: a request that ends later ended with that status."""
        upstream = await self._open_upstream(
            request, model, body, guard, drop_authorization, decoded
        )
        guard.on_cut = lambda: _cut(request, upstream)
        try:
            if not _is_small(request, upstream):
                return await _stream(request, model, upstream, guard, on_started)
            whole = await _answer_whole(model, upstream, guard)
        finally:
            guard.on_cut = None
            upstream.close()  # releases a finished connection; aborts an unfinished one
        if on_started is not None:  # aiohttp sends it as the handler returns
            on_started(whole.status)
        return whole

    async def _open_upstream(
        self,
        request: web.Request,
        model: ModelConfig,
        body: bytes,
        guard: InFlightGuard,
        drop_authorization: bool,
        decoded: bool,
    ) -> aiohttp.ClientResponse:
        """The backend's answer, up to its headers."""
        drop = _DROP_REQUEST_AND_AUTH if drop_authorization else _DROP_REQUEST
        if decoded:
            drop = drop | {"content-encoding"}
        headers = _filtered(request.headers, drop)
        _append_forwarded_for(headers, request.remote)
        url = URL(f"http://127.0.0.1:{model.port}{_target(request)}", encoded=True)
        # Cutting closes the client's connection; with handler cancellation that also
        # cancels a request still waiting for the backend's headers.
        guard.on_cut = lambda: _cut(request, None)
        try:
            return await self._send(request.method, url, headers, body, model)
        finally:
            guard.on_cut = None

    async def _send(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: bytes,
        model: ModelConfig,
    ) -> aiohttp.ClientResponse:
        for attempt in (1, 2):
            try:
                if len(body) > _RAW_BYTES_LIMIT:  # streamed: say its length, or it is chunked
                    headers["Content-Length"] = str(len(body))
                return await self.session.request(
                    method, url, headers=headers, data=_payload(body), allow_redirects=False
                )
            except _STALE_CONNECTION as exc:
                if attempt == 1 and not isinstance(exc, aiohttp.ClientConnectorError):
                    continue  # a dead pooled connection: nothing reached the client yet
                raise _backend_error(model, exc) from None
            except (aiohttp.ClientError, OSError) as exc:
                raise _backend_error(model, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover


def _backend_error(model: ModelConfig, exc: BaseException) -> BackendError:
    reason = str(exc) or type(exc).__name__
    logger.warning(
        "backend of %r on port %d failed: %s",
        model.id,
        model.port,
        reason,
        extra={"event": "backend_error", "model": model.id, "port": model.port},
    )
    return BackendError(f"backend of model {model.id!r} failed: {reason}")


def _is_small(request: web.Request, upstream: aiohttp.ClientResponse) -> bool:
    length = upstream.content_length
    return length is not None and length <= SMALL_REPLY and request.method != "HEAD"


async def _answer_whole(
    model: ModelConfig, upstream: aiohttp.ClientResponse, guard: InFlightGuard
) -> web.Response:
    """A reply of known, small length, read whole and sent in one write (headers and
    body together, as aiohttp does for a `web.Response`). Nothing has reached the
    client yet if the backend fails while sending it: that is a 502, not a cut reply."""
    try:
        data = await upstream.read()
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        if guard.was_cut:
            # A drain timeout closed both connections (logged as drain_timeout): the
            # backend did not fail, and the client can be sent nothing. Counted as a
            # request cut while it waited for its answer (499), as before the headers.
            raise ClientGone(web.Response(status=503)) from None
        raise _backend_error(model, exc) from None
    except asyncio.CancelledError:
        _client_disconnected(model)
        raise
    headers = _filtered(upstream.headers, HOP_BY_HOP)
    return web.Response(status=upstream.status, reason=upstream.reason, body=data, headers=headers)


async def _stream(
    request: web.Request,
    model: ModelConfig,
    upstream: aiohttp.ClientResponse,
    guard: InFlightGuard,
    on_started: Callable[[int], None] | None,
) -> web.StreamResponse:
    """Anything else, passed on as its bytes arrive (`iter_any()`)."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    response.headers.extend(_filtered(upstream.headers, HOP_BY_HOP))
    tail = b""  # the last bytes sent: has the client had an event stream's end?
    try:
        await response.prepare(request)
        if on_started is not None:
            on_started(response.status)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
            tail = (tail + chunk)[-_END_LEN:] if len(chunk) < _END_LEN else chunk[-_END_LEN:]
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        if isinstance(exc, ConnectionResetError) and _client_gone(request) and not guard.was_cut:
            _client_disconnected(model, tail == _STREAM_END)
            raise ClientGone(response) from None
        if not guard.was_cut:  # a drain timeout is logged as drain_timeout
            logger.warning(
                "backend of %r failed mid-response: %s",
                model.id,
                exc,
                extra={"event": "backend_error", "model": model.id},
            )
        # The client must see a cut stream, not a complete answer.
        if request.transport is not None:
            request.transport.close()
    except ConnectionResetError:
        _client_disconnected(model, tail == _STREAM_END)
        raise ClientGone(response) from None
    except asyncio.CancelledError:
        _client_disconnected(model, tail == _STREAM_END)
        raise
    return response


def _payload(body: bytes) -> bytes | AsyncIterator[memoryview]:
    # aiohttp warns about (and, in tests, fails on) more than 1 MiB of raw bytes at once,
    # and a BytesIO would be copied twice: slices of a memoryview copy nothing. A fresh
    # iterator per attempt (it is consumed); the caller sets Content-Length.
    return _slices(body) if len(body) > _RAW_BYTES_LIMIT else body


async def _slices(body: bytes) -> AsyncIterator[memoryview]:
    view = memoryview(body)
    for start in range(0, len(view), _RAW_BYTES_LIMIT):
        yield view[start : start + _RAW_BYTES_LIMIT]


def _append_forwarded_for(headers: CIMultiDict[str], peer: str | None) -> None:
    """X-Forwarded-For as a proxy writes it: what the client sent (a claim, kept as such)
    followed by the address the request really came from (docs/design.md §5)."""
    claimed = [value for value in headers.popall("X-Forwarded-For", ()) if value.strip()]
    headers["X-Forwarded-For"] = ", ".join([*claimed, peer or "unknown"])


def _target(request: web.Request) -> str:
    return request_target(request)  # the target whose path `proxy_paths` let through


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def _client_disconnected(model: ModelConfig, ended: bool = False) -> None:
    if ended:
        # The OpenAI SDKs close as soon as `data: [DONE]` arrives, often before the
        # backend's last (empty) chunk: the client had all it wanted; nothing was aborted.
        logger.debug("client closed after the end of a stream from %r", model.id)
        return
    logger.info(
        "client went away; upstream request of %r aborted",
        model.id,
        extra={"event": "client_disconnected", "model": model.id},
    )


def _cut(request: web.Request, upstream: aiohttp.ClientResponse | None) -> None:
    if upstream is not None:
        upstream.close()
    if request.transport is not None:
        request.transport.close()
