"""The one exception hierarchy of aiollmux and its mapping to OpenAI-shaped HTTP errors.

Every error a client can see is a subclass of `LlmuxError`; `ERROR_TABLE` maps each
subclass to its HTTP status, OpenAI `type` and `code` in one place (docs/design.md §5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class LlmuxError(Exception):
    """Root of every aiollmux error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(LlmuxError, ValueError):
    """The configuration is invalid; the message names the file and the key path."""

    def __init__(self, source: str, key: str, message: str) -> None:
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.key = key
        self.detail = message


class RequestError(LlmuxError):
    """An error answered to an HTTP client; the table below gives its shape."""

    headers: dict[str, str]
    # The answer closes the connection: the request's body may be left unread (refused
    # before it was read), and the connection cannot be trusted to carry the next request.
    close_connection = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {}


class ModelRequired(RequestError):
    pass


class InvalidJSON(RequestError):
    pass


class ModelNotFound(RequestError):
    pass


class InvalidRequest(RequestError):
    """A request refused for its form (a dot-segment in its path, a client too slow)."""

    close_connection = True


class ClientTooSlow(InvalidRequest, TimeoutError):
    """The request body stalled past `client_body_timeout_secs`."""


class UnknownGroup(RequestError):
    """`/admin/sleep {"group": …}` names no GPU group."""


class InvalidConfig(RequestError):
    """`POST /admin/reload` found the configuration file invalid; nothing was applied."""


class PathNotProxied(RequestError):
    """The path is not among the proxied ones (docs/design.md §5 `proxy_paths`)."""

    close_connection = True


class BodyTooLarge(RequestError):
    pass


class Unauthorized(RequestError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["WWW-Authenticate"] = "Bearer"  # RFC 9110 §11.6.1


class QueueFull(RequestError, RuntimeError):
    def __init__(self, message: str, retry_after_secs: float) -> None:
        super().__init__(message)
        # Whole seconds, at least one (docs/design.md §5).
        self.headers["Retry-After"] = str(max(1, math.ceil(retry_after_secs)))


class WakeFailed(RequestError, RuntimeError):
    pass


class ModelTimeout(RequestError, TimeoutError):
    pass


class BackendError(RequestError, ConnectionError):
    pass


class ServiceStopping(RequestError, RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ErrorShape:
    status: int
    type: str
    code: str


ERROR_TABLE: dict[type[RequestError], ErrorShape] = {
    ModelRequired: ErrorShape(400, "invalid_request_error", "model_required"),
    InvalidJSON: ErrorShape(400, "invalid_request_error", "invalid_json"),
    InvalidRequest: ErrorShape(400, "invalid_request_error", "invalid_request"),
    UnknownGroup: ErrorShape(400, "invalid_request_error", "invalid_request"),
    InvalidConfig: ErrorShape(400, "invalid_request_error", "invalid_config"),
    ClientTooSlow: ErrorShape(408, "invalid_request_error", "invalid_request"),
    Unauthorized: ErrorShape(401, "invalid_request_error", "unauthorized"),
    ModelNotFound: ErrorShape(404, "invalid_request_error", "model_not_found"),
    PathNotProxied: ErrorShape(404, "invalid_request_error", "path_not_proxied"),
    BodyTooLarge: ErrorShape(413, "invalid_request_error", "body_too_large"),
    BackendError: ErrorShape(502, "server_error", "backend_error"),
    QueueFull: ErrorShape(503, "llmux_error", "queue_full"),
    WakeFailed: ErrorShape(503, "llmux_error", "wake_failed"),
    ServiceStopping: ErrorShape(503, "llmux_error", "shutting_down"),
    ModelTimeout: ErrorShape(504, "llmux_error", "model_timeout"),
}


def shape_of(error: RequestError) -> ErrorShape:
    for cls in type(error).__mro__:
        shape = ERROR_TABLE.get(cls)
        if shape is not None:
            return shape
    return ErrorShape(500, "server_error", "internal_error")


def http_error_shape(status: int, reason: str) -> ErrorShape:
    """The shape of an error aiohttp raised itself (405 Method Not Allowed, say): its
    status, and its reason as the code (`method_not_allowed`)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return ErrorShape(status, kind, reason.lower().replace(" ", "_"))


def error_body(message: str, shape: ErrorShape) -> dict[str, dict[str, str | None]]:
    return {"error": {"message": message, "type": shape.type, "code": shape.code, "param": None}}
