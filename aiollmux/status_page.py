"""`GET /ui/`: the status page's files, shipped in the package (docs/design.md §13).

The page holds no data: it is served to anyone who may reach the daemon, and its
admin calls (`/admin/*`) follow the admin rules.
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web

# The only files served: a fixed list, never a path from the request.
_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
}
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    # Same origin only: no CDN, nothing inline, no framing by another site.
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
}


@functools.cache
def _read(name: str) -> bytes:
    return resources.files("aiollmux.ui").joinpath(name).read_bytes()


def _serve(name: str) -> web.Response:
    response = web.Response(body=_read(name), headers=_HEADERS)
    response.headers["Content-Type"] = _ASSETS[name]
    return response


async def ui_redirect(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/ui/")


async def ui_page(request: web.Request) -> web.Response:
    return _serve("index.html")


async def ui_asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in _ASSETS:
        raise web.HTTPNotFound(reason="Not Found")
    return _serve(name)


async def ui_not_found(request: web.Request) -> web.Response:
    """Any other method or path under /ui: 404, never proxied to a backend."""
    raise web.HTTPNotFound(reason="Not Found")
