"""The daemon's live event stream (docs/design.md §13): the log's events, fanned out to readers.

One source: every `aiollmux.*` log record with an `event` field (info and above) becomes
the JSON log's object and goes to each reader of `GET /admin/events`; requests are
counted here and summarised once a second per model. Each reader has a bounded queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from aiollmux.logs import log_entry

QUEUE_LIMIT = 1000  # events queued for one reader before its events are dropped
RECENT_LIMIT = 200  # other recent events a new reader gets in its snapshot (the page's log)
TIMELINE_LIMIT = 200  # switch and hook events kept apart, so noise cannot push them out
SUMMARY_EVERY_SECS = 1.0
HEARTBEAT_SECS = 15.0
CLOSE_GRACE_SECS = 1.0  # at shutdown, for a reader's last write to reach a slow client

StatusSource = Callable[[], dict[str, Any]]
# Whether the admin rules (of the config now in force) still admit a reader, given what
# admitted it when it subscribed (the app's business: the hub keeps it opaque).
Admits = Callable[[object], bool]

# The page's timeline: kept in a ring of their own (docs/design.md §13: recent switches and hooks).
TIMELINE_EVENTS = frozenset(
    {
        "switch_started",
        "model_activated",
        "switch_failed",
        "hook_completed",
        "hook_failed",
        "hook_timeout",
        "sleep_hook_failed",
        "model_lost",
        "idle_sleep",
        "model_adopted",
        "config_reloaded",
    }
)
# Logged once per request: readers get them counted in the `requests` summary instead
# (docs/design.md §13: "never one per request"); the log keeps each one.
PER_REQUEST_EVENTS = frozenset({"backend_error", "client_disconnected", "request_timeout"})


def _first(item: tuple[int, dict[str, Any]]) -> int:
    return item[0]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Frame:
    """One event as SSE bytes, encoded once for every reader."""

    name: str
    data: bytes

    @classmethod
    def of(cls, document: dict[str, Any]) -> Frame:
        name = str(document["event"])
        payload = json.dumps(document, default=str)
        return cls(name, f"event: {name}\ndata: {payload}\n\n".encode())


@dataclass(frozen=True, slots=True)
class _Gap:
    """Where a reader's events were dropped: `count` of them."""

    count: int


@dataclass(eq=False, slots=True)
class Reader:
    """One reader's queue: bounded, so a reader that never reads costs bounded memory."""

    limit: int = QUEUE_LIMIT
    credentials: object = None  # what admitted the reader (see `Admits`)
    dropped: int = 0
    closed: bool = False
    task: asyncio.Task[Any] | None = None
    _queue: collections.deque[Frame | _Gap] = field(default_factory=collections.deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, frame: Frame) -> None:
        if self.closed:
            return
        if len(self._queue) >= self.limit:
            self.dropped += 1
            return
        if self.dropped:  # the gap goes where it happened, before what came after it
            self._queue.append(_Gap(self.dropped))
            self.dropped = 0
        self._queue.append(frame)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def revoke(self) -> None:
        """No longer admitted: nothing more is sent, not even what is queued."""
        self._queue.clear()
        self.dropped = 0
        self.close()

    def take(self) -> Frame | _Gap | None:
        if self._queue:
            return self._queue.popleft()
        if self.dropped:
            gap, self.dropped = _Gap(self.dropped), 0
            return gap
        self._ready.clear()
        return None

    async def wait(self) -> None:
        await self._ready.wait()

    @property
    def queued(self) -> int:
        return len(self._queue)


class EventHub:
    """Publishes events to every reader; keeps the recent ones and each model's last wake."""

    def __init__(
        self,
        status: StatusSource,
        *,
        heartbeat_secs: float = HEARTBEAT_SECS,
        admits: Admits | None = None,
    ) -> None:
        self._status = status
        self.heartbeat_secs = heartbeat_secs
        self._admits = admits
        self._readers: set[Reader] = set()
        self._sequence = 0
        self._recent: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(
            maxlen=RECENT_LIMIT
        )
        self._timeline: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(
            maxlen=TIMELINE_LIMIT
        )
        self._last_wake: dict[str, dict[str, Any]] = {}
        self._counts: dict[str, collections.Counter[str]] = {}
        self._errors: dict[str, collections.Counter[str]] = {}
        self._summary: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def readers(self) -> int:
        return len(self._readers)

    def backlog(self) -> list[tuple[int, int]]:
        """Each reader's queued and dropped events (what a slow reader costs)."""
        return [(reader.queued, reader.dropped) for reader in self._readers]

    def publish(self, document: dict[str, Any]) -> None:
        """Send an event (a dict with `event` and `ts`) to every reader."""
        name = document["event"]
        if name in PER_REQUEST_EVENTS:
            self._count_error(str(document.get("model")), name)
            return
        if name != "requests" or document.get("errors"):
            self._remember(document)
        if not self._readers:
            return
        frame = Frame.of(document)
        for reader in self._readers:
            reader.offer(frame)
        if name == "config_reloaded":
            self._revoke_unadmitted()
            # The model list may have changed: a fresh picture, after the event itself.
            self.publish_snapshot()

    def _revoke_unadmitted(self) -> None:
        """After a reload, end the streams the new admin rules no longer admit (a changed
        or newly set `admin_token`): the token is not only checked at connect."""
        if self._admits is None:
            return
        for reader in self._readers:
            if not reader.closed and not self._admits(reader.credentials):
                reader.revoke()

    def _remember(self, document: dict[str, Any]) -> None:
        self._sequence += 1
        ring = self._timeline if document["event"] in TIMELINE_EVENTS else self._recent
        ring.append((self._sequence, document))
        if document.get("hook") == "wake" and document["event"] in (
            "hook_completed",
            "hook_failed",
            "hook_timeout",
        ):
            self._last_wake[str(document.get("model"))] = {
                "seconds": document.get("duration"),
                "ok": document["event"] == "hook_completed",
                "ts": document["ts"],
            }

    def snapshot(self) -> dict[str, Any]:
        """`{"event": "snapshot", "ts", "status"}` plus the recent events and last wakes."""
        return {
            "event": "snapshot",
            "ts": _now(),
            "status": self._status(),
            "recent": [d for _, d in heapq.merge(self._timeline, self._recent, key=_first)],
            "last_wake": dict(self._last_wake),
        }

    def publish_snapshot(self) -> None:
        if self._readers:
            frame = Frame.of(self.snapshot())
            for reader in self._readers:
                reader.offer(frame)

    # -- request summaries ------------------------------------------------------------

    def request_finished(self, model: str, status: str) -> None:
        """Count a finished request (the hot path: a dict update, only while someone reads)."""
        if not self._readers:
            return
        counts = self._counts.get(model)
        if counts is None:
            counts = self._counts[model] = collections.Counter()
        counts[status] += 1
        self._start_summaries()

    def _count_error(self, model: str, name: str) -> None:
        """A per-request event (`PER_REQUEST_EVENTS`), folded into the model's summary."""
        if not self._readers:
            return
        errors = self._errors.get(model)
        if errors is None:
            errors = self._errors[model] = collections.Counter()
        errors[name] += 1
        self._start_summaries()

    def _start_summaries(self) -> None:
        if self._summary is None and not self._closed:
            self._summary = asyncio.create_task(self._summarise(), name="event-summaries")

    async def _summarise(self) -> None:
        """Once a second, one `requests` event per model that had requests (with `errors`:
        the per-request events counted by name, when there were any); ends when a second
        passes without any (the next request starts it again)."""
        try:
            while True:
                await asyncio.sleep(SUMMARY_EVERY_SECS)
                counts, self._counts = self._counts, {}
                errors, self._errors = self._errors, {}
                if not counts and not errors:
                    return
                ts = _now()
                for model in sorted(counts.keys() | errors.keys()):
                    by_status = counts.get(model, collections.Counter())
                    summary: dict[str, Any] = {
                        "event": "requests",
                        "ts": ts,
                        "model": model,
                        "count": sum(by_status.values()),
                        "by_status": dict(sorted(by_status.items())),
                    }
                    if model in errors:
                        summary["errors"] = dict(sorted(errors[model].items()))
                    self.publish(summary)
        finally:
            self._summary = None

    # -- readers ------------------------------------------------------------------------

    def subscribe(self, credentials: object = None) -> Reader:
        """A new reader; `credentials`: what admitted it, for `admits` after a reload."""
        reader = Reader(credentials=credentials)
        reader.task = asyncio.current_task()
        if self._closed:  # shutting down: the stream ends after its snapshot
            reader.close()
        self._readers.add(reader)
        return reader

    def unsubscribe(self, reader: Reader) -> None:
        self._readers.discard(reader)

    async def stream(self, reader: Reader, response: web.StreamResponse) -> None:
        """Write `reader`'s events to `response` until the hub closes (or the client goes)."""
        while True:
            item = reader.take()
            if item is None:
                if reader.closed:
                    return
                try:
                    async with asyncio.timeout(self.heartbeat_secs):
                        await reader.wait()
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                continue
            if isinstance(item, _Gap):
                gap = {"event": "dropped", "ts": _now(), "count": item.count}
                # What was dropped is unknown: the reader gets a fresh picture after it.
                await response.write(Frame.of(gap).data + Frame.of(self.snapshot()).data)
            else:
                await response.write(item.data)

    async def close(self) -> None:
        """Shutdown: end every stream. A reader still blocked on a client that reads
        nothing after `CLOSE_GRACE_SECS` is cut, so it cannot hold the graceful shutdown."""
        self._closed = True
        if self._summary is not None:
            self._summary.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._summary
        for reader in self._readers:
            reader.close()
        tasks = {r.task for r in self._readers if r.task is not None and not r.task.done()}
        tasks.discard(asyncio.current_task())  # a reader closing the hub is not waited for
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=CLOSE_GRACE_SECS)
            for task in stuck:
                task.cancel()


class EventLogHandler(logging.Handler):
    """Turns `aiollmux.*` records with an `event` field into events on the hub."""

    def __init__(self, hub: EventHub, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.INFO)
        self._hub = hub
        self._loop = loop
        self._thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) is None:
            return
        try:
            entry = log_entry(record)
            if threading.get_ident() == self._thread:
                self._hub.publish(entry)
            else:  # logged off the loop (a config read in a worker thread)
                self._loop.call_soon_threadsafe(self._hub.publish, entry)
        except Exception:  # never into the switch or request that logged
            self.handleError(record)


@contextlib.contextmanager
def events_from_log(hub: EventHub) -> Iterator[None]:
    """Feed `hub` from the `aiollmux` logger while the app runs. The logger must pass
    info records for that, whatever the log settings (a test configures none)."""
    logger = logging.getLogger("aiollmux")
    handler = EventLogHandler(hub, asyncio.get_running_loop())
    with _LEVEL_LOCK:
        if not _level_users:
            _saved_level[:] = [logger.level]
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
        _level_users.append(handler)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        with _LEVEL_LOCK:
            _level_users.remove(handler)
            if not _level_users:  # the last app to stop restores the level it found
                logger.setLevel(_saved_level.pop())


# Apps running in one process share the `aiollmux` logger: the level is raised by the
# first and restored by the last, so one stopping does not silence another's events.
_LEVEL_LOCK = threading.Lock()
_level_users: list[logging.Handler] = []
_saved_level: list[int] = []
