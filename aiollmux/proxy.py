"""Forwarding one request to its model's backend and streaming the answer back (docs/design.md §4).

Bytes pass through as they arrive (`iter_any()`, no buffering, no decompression); a small
reply of known length is read whole and answered in one write.
A stale keep-alive connection is retried once; a client that goes away aborts the
upstream request; a backend that fails before answering becomes a 502.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import HttpVersion11, web

from aiollmux.admission import InFlightGuard
from aiollmux.config import ModelConfig
from aiollmux.errors import BackendError
from aiollmux.paths import request_target
from aiollmux.upstream import (
    Response,
    Upstream,
    UpstreamError,
    connection_tokens,
    header_lines,
)

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
# `Expect: 100-continue` too: the whole body is already here, and a backend would
# answer it with an interim 100 for nothing.
_SET_BY_CLIENT = frozenset({"host", "content-length", "expect"})
# A backend reply with a Content-Length up to this is read whole and answered in one write.
SMALL_REPLY = 64 * 1024
# The last event of an OpenAI-style event stream (and, framed, its chunk's end).
_STREAM_END = b"data: [DONE]\n\n"
_FRAMED_END = _STREAM_END + b"\r\n"
# A framed answer is written straight to the client's transport; above this many bytes
# waiting there, the proxy waits for them to drain (aiohttp's own writer does the same).
_WRITE_HIGH = 64 * 1024


# The sets of header names dropped in each direction (computed once, not per request).
_DROP_REQUEST = frozenset(name.encode() for name in HOP_BY_HOP | _SET_BY_CLIENT)
_DROP_REQUEST_AND_AUTH = _DROP_REQUEST | {b"authorization"}
_FORWARDED_FOR = b"x-forwarded-for"


def _forwarded_fields(request: web.Request, drop: frozenset[bytes]) -> bytes:
    """The client's header fields as they go to the backend, their bytes untouched: less
    the connection-specific ones (and those its Connection header names), then
    X-Forwarded-For as a proxy writes it — what the client sent (a claim, kept as such)
    followed by the address the request really came from (docs/design.md §5)."""
    if "Connection" in request.headers:  # it may name more connection-specific headers
        named = connection_tokens(request.headers.getall("Connection"))
        drop = drop | {token.encode("utf-8", "surrogateescape") for token in named}
    kept: list[tuple[bytes, bytes]] = []
    claimed: list[bytes] = []
    for name, value in request.raw_headers:
        lower = name.lower()
        if lower in drop:
            continue
        if lower == _FORWARDED_FOR:
            if value.strip():
                claimed.append(value)
            continue
        kept.append((name, value))
    claimed.append((request.remote or "unknown").encode())
    kept.append((b"X-Forwarded-For", b", ".join(claimed)))
    return header_lines(kept)


# The body's length is said once, by us: from the framing the backend used (a value list
# such as "2, 2" is one length; Transfer-Encoding with a length was refused upstream).
_DROP_BACK = HOP_BY_HOP | {"content-length"}


def _passed_back(upstream: Response, *, length: bool) -> list[tuple[str, str]]:
    """The backend's header fields as they go to the client; `length`: with the body's
    Content-Length when the backend framed it so (else aiohttp says the length of the
    body it is given, or chunks it)."""
    tokens = upstream.connection_tokens
    drop = _DROP_BACK | tokens if tokens else _DROP_BACK
    fields = [(name, value) for name, value in upstream.fields if name.lower() not in drop]
    if length and upstream.content_length is not None:
        fields.append(("Content-Length", str(upstream.content_length)))
    return fields


class ClientGone(Exception):
    """The client went away mid-response (routine, logged at info as
    `client_disconnected`). The handler returns `response` quietly: aiohttp's own
    final write then meets the closed connection and says nothing."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("the client went away")
        self.response = response


class Proxy:
    def __init__(self) -> None:
        self._upstream: Upstream | None = None

    def open(self) -> None:
        # Generations can stream for many minutes: only connecting is bounded.
        self._upstream = Upstream(limit=1024, keepalive_secs=30, connect_secs=10)

    async def close(self) -> None:
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None

    @property
    def upstream(self) -> Upstream:
        if self._upstream is None:
            raise RuntimeError("the proxy's upstream client is not open")
        return self._upstream

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
    ) -> Response:
        """The backend's answer, up to its headers."""
        drop = _DROP_REQUEST_AND_AUTH if drop_authorization else _DROP_REQUEST
        if decoded:
            drop = drop | {b"content-encoding"}
        fields = _forwarded_fields(request, drop)
        # Cutting closes the client's connection; with handler cancellation that also
        # cancels a request still waiting for the backend's headers.
        guard.on_cut = lambda: _cut(request, None)
        try:
            return await self.upstream.request(
                model.port,
                request.method,
                _target(request),
                fields,
                body,
                # A chunked answer goes to an HTTP/1.1 client chunked, as it came.
                framed=request.version == HttpVersion11,
            )
        except UpstreamError as exc:
            raise _backend_error(model, exc) from None
        finally:
            guard.on_cut = None


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


def _is_small(request: web.Request, upstream: Response) -> bool:
    length = upstream.content_length
    return length is not None and length <= SMALL_REPLY and request.method != "HEAD"


async def _answer_whole(
    model: ModelConfig, upstream: Response, guard: InFlightGuard
) -> web.Response:
    """A reply of known, small length, read whole and sent in one write (headers and
    body together, as aiohttp does for a `web.Response`). Nothing has reached the
    client yet if the backend fails while sending it: that is a 502, not a cut reply."""
    try:
        data = await upstream.read()
    except UpstreamError as exc:
        if guard.was_cut:
            # A drain timeout closed both connections (logged as drain_timeout): the
            # backend did not fail, and the client can be sent nothing. Counted as a
            # request cut while it waited for its answer (499), as before the headers.
            raise ClientGone(web.Response(status=503)) from None
        raise _backend_error(model, exc) from None
    except asyncio.CancelledError:
        _client_disconnected(model)
        raise
    headers = _passed_back(upstream, length=False)
    return web.Response(status=upstream.status, reason=upstream.reason, body=data, headers=headers)


async def _stream(
    request: web.Request,
    model: ModelConfig,
    upstream: Response,
    guard: InFlightGuard,
    on_started: Callable[[int], None] | None,
) -> web.StreamResponse:
    """Anything else, passed on as its bytes arrive (`iter_any()`).

    A chunked answer to an HTTP/1.1 client comes framed (`Response.framed`): its bytes go
    to the client's transport as they are, and aiohttp's writer, told the body is chunked,
    writes only the head and, when the handler returns, the last chunk. Framing each piece
    again in aiohttp's writer cost more CPU per chunk of a token stream than reading it."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    response.headers.extend(_passed_back(upstream, length=True))
    framed = upstream.framed
    if framed:
        response.enable_chunked_encoding()
    elif upstream.content_length is None and request.version < HttpVersion11:
        # An HTTP/1.0 client: the body ends when the connection closes. (aiohttp 3.14
        # kept it open for a client that asked for keep-alive, without saying so.)
        response.force_close()
    # The last two pieces sent (kept, not copied): has the client had the stream's end?
    before = sent = b""
    try:
        await response.prepare(request)
        if on_started is not None:
            on_started(response.status)
        if framed:
            writer = request.writer
            writer.send_headers()
            async for piece in upstream.iter_any():
                transport = request.transport
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("the client went away")
                transport.write(piece)
                before, sent = sent, piece
                if transport.get_write_buffer_size() > _WRITE_HIGH:
                    await writer.drain()
        else:
            async for piece in upstream.iter_any():
                await response.write(piece)
                before, sent = sent, piece
    except UpstreamError as exc:
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
    except ConnectionResetError:  # writing to a client that has gone
        if not guard.was_cut:  # (a drain timeout closed it: logged as drain_timeout)
            _client_disconnected(model, _had_end(before, sent))
            raise ClientGone(response) from None
    except asyncio.CancelledError:
        _client_disconnected(model, _had_end(before, sent))
        raise
    return response


def _had_end(before: bytes, sent: bytes) -> bool:
    """Do the last two pieces sent end an event stream (framed or not)?"""
    tail = sent if len(sent) >= len(_FRAMED_END) else before + sent
    return tail.endswith((_STREAM_END, _FRAMED_END))


def _target(request: web.Request) -> str:
    return request_target(request)  # the target whose path `proxy_paths` let through


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


def _cut(request: web.Request, upstream: Response | None) -> None:
    if upstream is not None:
        upstream.close()
    if request.transport is not None:
        # Aborted, not closed: close() waits for the bytes still buffered to reach a
        # client that may have stopped reading, and until then the handler waiting for
        # them to drain would never unwind (nor give its model back).
        request.transport.abort()
