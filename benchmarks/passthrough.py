"""The floor for the benchmark: a bare aiohttp pass-through proxy on aiollmux's stack,
as tuned as a ~40-line proxy gets.

One shared ClientSession with an unbounded pool, the whole request body read (a model
router must read it); a backend answer with a Content-Length of at most 64 KiB goes back
in one write (`web.Response`), anything else is streamed with `iter_any()`; a listen
backlog of 4096. No routing, no switching, no metrics.
Run: `python benchmarks/passthrough.py --port 9000 --backend-port 8001`.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer"}
    | {"transfer-encoding", "upgrade", "host", "content-length"}
)
SESSION = web.AppKey("session", aiohttp.ClientSession)
BACKEND = web.AppKey("backend", str)
SMALL_REPLY = 64 * 1024


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
    url = URL(request.app[BACKEND] + request.raw_path, encoded=True)
    session = request.app[SESSION]
    async with session.request(
        request.method, url, headers=headers, data=body, allow_redirects=False
    ) as upstream:
        passed = [(k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP]
        length = upstream.content_length
        if length is not None and length <= SMALL_REPLY:
            return web.Response(
                status=upstream.status,
                reason=upstream.reason,
                body=await upstream.read(),
                headers=CIMultiDict(passed),  # given here, so no default Content-Type is added
            )
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(passed)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    return response


async def session_context(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
    app[SESSION] = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10),
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
    )
    yield
    await app[SESSION].close()


def main() -> None:
    parser = argparse.ArgumentParser(description="bare aiohttp pass-through proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend-port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=2**63)
    app[BACKEND] = f"http://127.0.0.1:{args.backend_port}"
    app.cleanup_ctx.append(session_context)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        handler_cancellation=True,
        backlog=4096,
        print=None,
    )


if __name__ == "__main__":
    main()
