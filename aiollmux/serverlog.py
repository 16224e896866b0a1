"""What aiohttp's HTTP server logs about clients, tamed (docs/design.md §5 "Exposure and limits").

aiohttp logs every malformed request as an ERROR with a traceback, and the parser's
message quotes the offending bytes: a bad `Authorization` line (a NUL, or one too long)
would land in the log key and all, at a rate any peer chooses. Through this logger a
malformed request is one info line, without the request's bytes, at most once a second
(with a count of what was suppressed); anything else aiohttp reports goes on as it was.
"""

from __future__ import annotations

import logging
from typing import Any

from aiollmux.ratelimit import RateLimitedLog

logger = logging.getLogger(__name__)
_malformed = RateLimitedLog(logger, 1.0)
# aiohttp's wording when it answers a request it could not parse (web_protocol.handle_error).
_CLIENT_ERROR = "Error handling request"


class ServerLogger(logging.LoggerAdapter[logging.Logger]):
    """The `logger` aiohttp's request handler is given (`make_runner`)."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith(_CLIENT_ERROR):
            self._malformed(args, kwargs.get("exc_info"))
            return
        super().exception(msg, *args, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith(_CLIENT_ERROR):
            # Non-HTTP bytes as a connection's first request (aiohttp logs those at debug).
            self._malformed(args, kwargs.get("exc_info"))
            return
        super().debug(msg, *args, **kwargs)

    @staticmethod
    def _malformed(args: tuple[object, ...], exc: object) -> None:
        peer = args[0] if args else "?"
        # The type and status only: the exception's text quotes the request's bytes.
        kind = type(exc).__name__ if isinstance(exc, BaseException) else "error"
        status = getattr(exc, "code", None) or getattr(exc, "status", None) or 400
        _malformed.log(
            "malformed_request",
            logging.INFO,
            "malformed request from %s (%s, answered %s)",
            peer,
            kind,
            status,
            extra={"event": "malformed_request", "peer": str(peer)},
        )
