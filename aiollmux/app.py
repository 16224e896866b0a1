"""The aiohttp application: routes, auth, error shapes, the proxy handler (docs/design.md §5)."""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from aiollmux.allocator import LARGE_BODY_BYTES, HeapTrimmer
from aiollmux.config import Config, ModelConfig
from aiollmux.errors import (
    BackendError,
    BodyTooLarge,
    ClientTooSlow,
    InvalidConfig,
    InvalidJSON,
    ModelRequired,
    RequestError,
    Unauthorized,
    UnknownGroup,
    error_body,
    http_error_shape,
    shape_of,
)
from aiollmux.events import EventHub, Frame, events_from_log
from aiollmux.metrics import CONTENT_TYPE, Metrics
from aiollmux.multiplexer import Multiplexer
from aiollmux.paths import check_any_model, check_model, decoded_path, request_target
from aiollmux.proxy import ClientGone, Proxy
from aiollmux.reload import Reloader
from aiollmux.request_body import decoded_body, find_model, find_model_quickly, parse_json
from aiollmux.status_page import ui_asset, ui_not_found, ui_page, ui_redirect

logger = logging.getLogger(__name__)

MULTIPLEXER = web.AppKey("multiplexer", Multiplexer)
PROXY = web.AppKey("proxy", Proxy)
METRICS = web.AppKey("metrics", Metrics)
RELOADER = web.AppKey("reloader", Reloader)
TRIMMER = web.AppKey("trimmer", HeapTrimmer)
EVENTS = web.AppKey("events", EventHub)
# Undoing a Content-Encoding may expand a small body to the body limit: at most this many
# at once (docs/design.md §5), whatever the size of the thread pool.
DECODE_SLOTS = web.AppKey("decode_slots", asyncio.Semaphore)
CONCURRENT_DECODES = 2

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ADMIN_BODY_LIMIT = 1024 * 1024  # {"model": …} or {"group": …}


def _dumps(document: Any) -> str:
    return json.dumps(document) + "\n"  # a shell prompt after `curl` starts on its own line


def json_answer(
    document: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Our own JSON answers (errors, /v1/models, /health, /admin/...), newline-ended."""
    return web.json_response(document, status=status, headers=headers, dumps=_dumps)


def error_response(error: RequestError) -> web.Response:
    shape = shape_of(error)
    response = json_answer(
        error_body(error.message, shape), status=shape.status, headers=error.headers
    )
    if error.close_connection:
        response.force_close()
    return response


def openai_errors(handler: Handler) -> Handler:
    """Answer a `RequestError` as OpenAI-shaped JSON (a wrapper fixed at registration,
    not a middleware: aiohttp rebuilds the middleware chain on every request)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as error:
            return error_response(error)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            shape = http_error_shape(exc.status, exc.reason)
            return json_answer(error_body(exc.reason, shape), status=shape.status)

    return wrapped


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches_any(token: str | None, secrets: tuple[str, ...]) -> bool:
    if token is None:
        return False
    found = False
    for secret in secrets:  # no early exit: the time taken does not tell which key matched
        found |= hmac.compare_digest(token.encode(), secret.encode())
    return found


def check_api_key(request: web.Request) -> None:
    keys = request.app[MULTIPLEXER].config.api_keys
    if keys and not _matches_any(_bearer(request), keys):
        raise Unauthorized("a valid API key is required: Authorization: Bearer <key>")


def admin_token(config: Config) -> str | None:
    return config.admin_token or os.environ.get("LLMUX_ADMIN_TOKEN") or None


def check_admin(request: web.Request) -> None:
    _refuse_other_sites(request)
    token = admin_token(request.app[MULTIPLEXER].config)
    if token is not None:
        if not _matches_any(_bearer(request), (token,)):
            raise Unauthorized("the admin token is required: Authorization: Bearer <token>")
        return
    if not _is_loopback(request.remote):
        raise Unauthorized("admin routes answer only loopback clients when no admin_token is set")
    if not _names_this_machine(request.host):
        # DNS rebinding: a web page whose name resolves to 127.0.0.1 is "loopback" too.
        raise Unauthorized(
            "without an admin_token, admin routes answer only requests addressed to this"
            " machine (localhost, its host name or an IP address)"
        )


def _refuse_other_sites(request: web.Request) -> None:
    """A web page of another site must not drive the daemon through its user's browser
    (a browser on the GPU box is a loopback client): its requests carry a foreign
    `Origin` or `Sec-Fetch-Site: cross-site`. The CLI and curl send neither; the status
    page is same-origin."""
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        raise Unauthorized("admin routes refuse cross-site requests from web pages")
    origin = request.headers.get("Origin")
    if origin is None:
        return
    host = request.host.lower()
    if origin.lower() not in (f"http://{host}", f"https://{host}"):
        raise Unauthorized(
            f"admin routes refuse requests from web pages of another origin ({origin[:100]!r})"
        )


def _names_this_machine(host: str) -> bool:
    """`Host` names an IP address, localhost or this machine's own name (any port)."""
    name = host.lower()
    if name.startswith("["):  # [::1]:3000
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return True
    own = socket.gethostname().lower()
    return name in ("localhost", own, own.partition(".")[0]) or name.endswith(".localhost")


def _is_loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%")[0])
    except ValueError:
        return False
    # A dual-stack listener sees local IPv4 clients as ::ffff:127.0.0.1.
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


async def read_body(request: web.Request, limit: int, stall_secs: float | None = None) -> bytes:
    """The whole body, at most `limit` bytes; `stall_secs`: the longest wait for its next
    bytes (`client_body_timeout_secs`, docs/design.md §5), else 408."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"the request body is larger than {limit} bytes")
    if request.content.is_eof():
        # All of it arrived with the headers (most requests): no wait to bound.
        return _within_limit(request.content.read_nowait(), limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(stall_secs):
                chunk = await request.content.readany()
        except TimeoutError:
            raise ClientTooSlow(
                f"no bytes of the request body arrived for {stall_secs:g}s"
                " (client_body_timeout_secs)"
            ) from None
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _within_limit(body: bytes, limit: int) -> bytes:
    if len(body) > limit:
        raise BodyTooLarge(f"the request body is larger than {limit} bytes")
    return body


async def _route(
    request: web.Request, mux: Multiplexer, body: bytes
) -> tuple[ModelConfig, bytes, bool]:
    """The model a request names, the body to forward, and whether that body is a
    decoded copy (an `upstream_model` rewrite of a compressed body: sent without its
    Content-Encoding). Otherwise the body is forwarded exactly as it came."""
    content_type = request.headers.get("Content-Type", "")
    plain = body
    if "Content-Encoding" in request.headers and body:
        encoding = ", ".join(request.headers.getall("Content-Encoding"))
        # Inflating megabytes is CPU work: off the loop, like the walk below.
        limit = mux.config.max_request_body_bytes
        async with request.app[DECODE_SLOTS]:
            plain = await asyncio.to_thread(decoded_body, body, encoding, limit)
    field = find_model_quickly(plain, content_type)
    if field is None:
        # An unusual layout of a large body: walking megabytes can take a while, off the loop.
        field = await asyncio.to_thread(find_model, plain, content_type)
    model = mux.resolve(field.name)
    if model.upstream_model is None:
        return model, body, False
    return model, field.rewrite(plain, model.upstream_model), plain is not body


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    mux = request.app[MULTIPLEXER]
    config = mux.config
    check_api_key(request)
    # Before the body is read: a path no model serves is refused without taking it in.
    path = decoded_path(request_target(request))
    check_any_model(path, config)
    started = time.monotonic()
    body = await read_body(request, config.max_request_body_bytes, config.client_body_timeout_secs)
    model, body, decoded = await _route(request, mux, body)
    check_model(path, config, model)
    metrics = request.app[METRICS]
    # The client went away before an answer (nginx's convention). Once the answer has
    # started, the status recorded is the one sent, however the request ends (as nginx
    # logs it): a client that closes after the last byte it wanted did not abort.
    status = "499"

    def answer_started(code: int) -> None:
        nonlocal status
        status = str(code)

    try:
        guard = await mux.acquire(model)
        try:
            response = await request.app[PROXY].forward(
                request,
                model,
                body,
                guard,
                drop_authorization=bool(config.api_keys),
                decoded=decoded,
                on_started=answer_started,
            )
            status = str(response.status)
            return response
        except ClientGone as gone:
            return gone.response
        finally:
            guard.release()
    except RequestError as error:
        status = str(shape_of(error).status)
        if isinstance(error, BackendError):
            mux.backend_failed(model)
        raise
    finally:
        metrics.request_finished(model.id, status, time.monotonic() - started)
        if len(body) >= LARGE_BODY_BYTES:
            request.app[TRIMMER].large_body_done()
        request.app[EVENTS].request_finished(model.id, status)


async def health(request: web.Request) -> web.Response:
    return json_answer({"status": "ok"})


async def metrics_handler(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def _model_object(model_id: str, aliases: tuple[str, ...]) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "aiollmux",
        "aliases": list(aliases),
    }


async def list_models(request: web.Request) -> web.Response:
    check_api_key(request)
    models = request.app[MULTIPLEXER].config.models
    data = [_model_object(m.id, m.aliases) for m in sorted(models.values(), key=lambda m: m.id)]
    return json_answer({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    check_api_key(request)
    model = request.app[MULTIPLEXER].resolve(request.match_info["model_id"])
    return json_answer(_model_object(model.id, model.aliases))


async def admin_status(request: web.Request) -> web.Response:
    check_admin(request)
    return json_answer(request.app[MULTIPLEXER].status())


async def admin_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: a snapshot, then the daemon's events (docs/design.md §13)."""
    check_admin(request)
    hub = request.app[EVENTS]
    reader = hub.subscribe(_AdminCredentials(_bearer(request), request.remote))
    try:
        first = Frame.of(hub.snapshot())  # taken with the subscription: nothing in between
        response = web.StreamResponse(headers=_EVENT_STREAM_HEADERS)
        await response.prepare(request)
        await response.write(first.data)
        await hub.stream(reader, response)
        await response.write_eof()
        return response
    finally:
        hub.unsubscribe(reader)


@dataclass(frozen=True, slots=True)
class _AdminCredentials:
    """What an event stream's reader presented at connect, checked again on reload."""

    bearer: str | None
    remote: str | None


def _still_admitted(mux: Multiplexer, credentials: object) -> bool:
    """Whether the admin rules of the config now in force admit a reader (docs/design.md §5)."""
    if not isinstance(credentials, _AdminCredentials):
        return False
    token = admin_token(mux.config)
    if token is not None:
        return _matches_any(credentials.bearer, (token,))
    return _is_loopback(credentials.remote)


_EVENT_STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass events on at once
}


async def _json_object(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    # Bytes, not request.json(): an unknown charset parameter would be a LookupError.
    # Read as proxied bodies are: UTF-8, a byte order mark ignored (RFC 8259 §8.1).
    config = request.app[MULTIPLEXER].config
    body = await read_body(request, ADMIN_BODY_LIMIT, config.client_body_timeout_secs)
    document = parse_json(body)
    if not isinstance(document, dict):
        raise InvalidJSON("the request body must be a JSON object")
    return document


async def admin_switch(request: web.Request) -> web.Response:
    check_admin(request)
    name = (await _json_object(request)).get("model")
    if not isinstance(name, str) or not name:
        raise ModelRequired('POST /admin/switch needs {"model": "<id>"}')
    mux = request.app[MULTIPLEXER]
    model = mux.resolve(name)
    await mux.switcher_for(model).switch_to(model.id)
    return json_answer({"status": "ok", "active_model": model.id})


async def admin_sleep(request: web.Request) -> web.Response:
    check_admin(request)
    body = await _json_object(request)
    group, name = body.get("group"), body.get("model")
    mux = request.app[MULTIPLEXER]
    if name is not None:
        if not isinstance(name, str) or not name or group is not None:
            raise ModelRequired('POST /admin/sleep takes {"model": "<id>"} or {"group": NAME}')
        model = mux.resolve(name)
        await mux.switcher_for(model).put_to_sleep(model.id)
        return json_answer({"status": "ok", "model": model.id, "state": "asleep"})
    if group is not None and (not isinstance(group, str) or group not in mux.switchers):
        raise UnknownGroup(f"unknown group {group!r}: expected one of {sorted(mux.switchers)}")
    targets = [mux.switchers[group]] if isinstance(group, str) else list(mux.switchers.values())
    for switcher in targets:
        await switcher.switch_to(None)
    return json_answer({"status": "ok", "state": "idle"})


async def admin_reload(request: web.Request) -> web.Response:
    check_admin(request)
    outcome = await request.app[RELOADER].trigger("POST /admin/reload")
    if outcome.result == "failed":
        raise InvalidConfig(outcome.error or "reload failed")
    return json_answer({"status": outcome.result, "generation": outcome.generation})


def build_app(
    config: Config, *, metrics: Metrics | None = None, watch: bool = True
) -> web.Application:
    """The whole daemon as an aiohttp application (started by `server.run` or by tests).

    `watch`: reload when the config file (`config.source`) changes on disk.
    """
    metrics = metrics if metrics is not None else Metrics()
    app = web.Application(client_max_size=2**63)
    app[METRICS] = metrics
    mux = app[MULTIPLEXER] = Multiplexer(config, metrics)
    app[RELOADER] = Reloader(mux, Path(config.source), watch=watch)
    app[PROXY] = Proxy()
    app[TRIMMER] = HeapTrimmer()
    app[EVENTS] = EventHub(mux.status, admits=functools.partial(_still_admitted, mux))
    app[DECODE_SLOTS] = asyncio.Semaphore(CONCURRENT_DECODES)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_close_event_streams)
    app.on_shutdown.append(_stop_switching)
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/health", health),
        ("GET", "/metrics", metrics_handler),
        ("GET", "/v1/models", list_models),
        ("GET", "/v1/models/{model_id:.+}", get_model),
        ("GET", "/admin/status", admin_status),
        ("POST", "/admin/switch", admin_switch),
        ("POST", "/admin/sleep", admin_sleep),
        ("POST", "/admin/reload", admin_reload),
        ("GET", "/admin/events", admin_events),
        ("GET", "/ui", ui_redirect),
        ("GET", "/ui/", ui_page),
        ("GET", "/ui/{asset:.+}", ui_asset),
        ("*", "/ui", ui_not_found),  # the page's paths are never proxied
        ("*", "/ui/{tail:.*}", ui_not_found),
        ("*", "/{tail:.*}", proxy_handler),  # last: any other path is proxied
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, openai_errors(handler))
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    proxy = app[PROXY]
    proxy.open()
    mux = app[MULTIPLEXER]
    reloader = app[RELOADER]
    try:
        with events_from_log(app[EVENTS]):
            await mux.adopt_awake_models()
            mux.start()
            reloader.start()
            yield
    finally:
        await reloader.close()
        await mux.close(sleep_active=mux.config.sleep_on_shutdown and mux.served)
        await proxy.close()
        app[TRIMMER].close()


async def _close_event_streams(app: web.Application) -> None:
    # First: an open stream must not hold the graceful shutdown.
    await app[EVENTS].close()


async def _stop_switching(app: web.Application) -> None:
    # Runs once the listener is closed, before in-flight requests are waited for. No
    # reload from here on: it could start what is being stopped (a health monitor).
    await app[RELOADER].close()
    await app[MULTIPLEXER].stop_switching()
