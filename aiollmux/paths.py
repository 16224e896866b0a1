"""Which request paths may reach a backend (docs/design.md §5 "Exposure and limits").

Only inference paths are proxied: the top-level `proxy_paths` (default `["/v1/"]`) plus
each model's own. A prefix ending in `/` matches everything below it; any other prefix
matches that path and what lies below it (`/api/chat` matches `/api/chat` and
`/api/chat/x`, not `/api/chatty`). Paths are compared percent-decoded; a path with a
dot-segment is refused outright, since the backend would resolve it elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote

from aiohttp import web

from aiollmux.config import Config, ModelConfig
from aiollmux.errors import InvalidRequest, PathNotProxied


def request_target(request: web.Request) -> str:
    """Path and query as the client sent them (what is forwarded). An absolute-form
    target (RFC 9112 §3.2.2, `POST http://host/v1/x`) is given in origin form."""
    raw = request.raw_path
    # (Targets without a path, `*` and `host:port`, never reach a handler: aiohttp's
    # router answers them 404.)
    return raw if raw.startswith("/") else request.rel_url.raw_path_qs


def decoded_path(target: str) -> str:
    """The path of `target`, percent-decoded; `InvalidRequest` if it has dot-segments
    (`/v1/../x`, `/v1/%2e%2e/x`, `/v1/.%2E/x`), in its raw or its decoded form."""
    path = unquote(target.partition("?")[0], errors="surrogateescape")
    for form in (target.partition("?")[0], path):
        if any(segment in (".", "..") for segment in form.split("/")):
            raise InvalidRequest(f"the request path may not contain '.' or '..' segments: {form!r}")
    return path


def _matches(path: str, prefixes: Iterable[str]) -> bool:
    for prefix in prefixes:
        if prefix.endswith("/"):
            if path.startswith(prefix):
                return True
        elif path == prefix or path.startswith(prefix + "/"):
            return True
    return False


def check_any_model(path: str, config: Config) -> None:
    """Before the body is read: the path is proxied for some model, or 404."""
    if _matches(path, config.proxy_paths):
        return
    if any(_matches(path, model.proxy_paths) for model in config.models.values()):
        return
    raise PathNotProxied(_not_proxied(path, config.proxy_paths))


def check_model(path: str, config: Config, model: ModelConfig) -> None:
    """Once the model is known: the path is proxied for this one, or 404."""
    if not _matches(path, config.proxy_paths) and not _matches(path, model.proxy_paths):
        raise PathNotProxied(_not_proxied(path, (*config.proxy_paths, *model.proxy_paths)))


def _not_proxied(path: str, prefixes: Iterable[str]) -> str:
    listed = ", ".join(repr(p) for p in prefixes)
    return (
        f"{path!r} is not forwarded to models: proxied paths are {listed} "
        "(proxy_paths in the configuration)"
    )
