"""Logging that an unauthenticated peer or an exhausted resource cannot turn into a flood
(docs/design.md §5): one line per cause and period, with a count of what was suppressed."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Mapping

# Errors that say the process or the system ran out of something (fds, memory, buffers,
# processes), not that one peer or one backend misbehaved.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN})
RESOURCE_PERIOD_SECS = 10.0


def is_resource_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS


def resource_cause(exc: BaseException) -> str:
    """A short name for what ran out: the errno's symbol (EMFILE), else the type's name."""
    code = getattr(exc, "errno", None)
    return (
        errno.errorcode.get(code, type(exc).__name__)
        if isinstance(code, int)
        else type(exc).__name__
    )


class RateLimitedLog:
    """At most one record per `period` seconds for each cause; the next one that gets
    through says how many were suppressed since (also as the `suppressed` field)."""

    def __init__(
        self,
        logger: logging.Logger,
        period: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.period = period
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(
        self,
        cause: str,
        level: int,
        message: str,
        *args: object,
        extra: Mapping[str, object] | None = None,
        exc_info: bool = False,
    ) -> bool:
        """Log unless `cause` was logged less than `period` ago; True if it was logged."""
        now = self._clock()
        last = self._last.get(cause)
        if last is not None and now - last < self.period:
            self._suppressed[cause] = self._suppressed.get(cause, 0) + 1
            return False
        if len(self._last) > 1000:  # causes are few; never let a bug grow this without bound
            self._last.clear()
        suppressed = self._suppressed.pop(cause, 0)
        self._last[cause] = now
        if suppressed:
            message += " (%d more like this in the last %.0fs not logged)"
            args = (*args, suppressed, now - (last if last is not None else now))
        self.logger.log(
            level,
            message,
            *args,
            exc_info=exc_info,
            extra={**(extra or {}), "suppressed": suppressed},
        )
        return True


# OS-resource errors anywhere in the daemon (accept, hook pipes, upstream sockets).
resource_errors = RateLimitedLog(logging.getLogger("aiollmux.resources"), RESOURCE_PERIOD_SECS)


def log_resource_error(where: str, exc: BaseException) -> None:
    """`exc` (an OS-resource error) met in `where`: logged at most once per 10 s per cause."""
    cause = f"{where}:{resource_cause(exc)}"
    resource_errors.log(
        cause,
        logging.ERROR,
        "out of a system resource in %s (%s): %s; retrying with a back-off",
        where,
        resource_cause(exc),
        exc,
        extra={"event": "resource_exhausted", "where": where, "cause": resource_cause(exc)},
    )
