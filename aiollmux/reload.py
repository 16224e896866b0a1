"""Live reconfiguration: file watching, SIGHUP and `POST /admin/reload` (docs/design.md §6).

Every trigger feeds one reload task, so reloads never overlap and a burst of triggers
becomes one reload. A reload re-reads the file, does nothing if its content is
unchanged, validates it completely, and only then applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import watchfiles

from aiollmux.config import (
    Config,
    check_listen_port,
    load_config,
    log_config_warnings,
    read_config_file,
)
from aiollmux.errors import ConfigError
from aiollmux.multiplexer import Multiplexer
from aiollmux.policy import load_policy

logger = logging.getLogger(__name__)

# watchfiles waits this long for a burst of events to end before it reports them.
DEBOUNCE_MS = 200
WATCH_RETRY_SECS = 2.0  # after a watcher failure
# How often the watcher's thread wakes to look for changes (watchfiles' `step`, 50 ms by
# default: 20 wake-ups a second, most of an idle daemon's CPU). A change is seen within
# this plus DEBOUNCE_MS; a stopped watcher's thread ends within it.
WATCH_STEP_MS = 500


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    result: Literal["applied", "unchanged", "failed"]
    generation: int
    error: str | None = None


def _read(path: Path) -> bytes | None:
    try:
        return read_config_file(path)
    except ConfigError:
        return None


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _as_seen_from(asked_at: int, outcome: ReloadOutcome) -> ReloadOutcome:
    """ "unchanged" for a caller who asked before a reload that was under way then applied
    this very file (it read it off the loop, after the edit): for that caller, the file
    was applied."""
    if outcome.result == "unchanged" and outcome.generation > asked_at:
        return ReloadOutcome("applied", outcome.generation)
    return outcome


class Reloader:
    """Owns the reload task and the file watcher of one running multiplexer."""

    def __init__(self, mux: Multiplexer, path: Path, *, watch: bool = True) -> None:
        self.mux = mux
        self.path = path
        self.watch = watch
        self._applied_digest = _digest(_read(path))
        self._failed_digest: str | None = None
        # Each waiter with the generation in effect when it asked.
        self._pending: list[tuple[asyncio.Future[ReloadOutcome], int]] = []
        self._wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._reload_loop(), name="reload"))
        if self.watch and self.path.parent.is_dir():
            self._tasks.append(asyncio.create_task(self._watch(), name="config-watch"))

    @property
    def running(self) -> bool:
        """Started and not closed: triggers are answered."""
        return bool(self._tasks)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for waiter, _ in self._pending:
            waiter.cancel()

    def trigger(self, reason: str, *, quiet: bool = False) -> asyncio.Future[ReloadOutcome]:
        """Ask for a reload; the future resolves once one that started after now ended.
        An operator's request is logged at info (an unchanged file says nothing more);
        the watcher's are `quiet` (debug): editors touch files often."""
        logger.log(
            logging.DEBUG if quiet else logging.INFO,
            "reload requested by %s",
            reason,
            extra={"event": "reload_requested", "by": reason},
        )
        waiter: asyncio.Future[ReloadOutcome] = asyncio.get_running_loop().create_future()
        self._pending.append((waiter, self.mux.generation))
        self._wanted.set()
        return waiter

    async def _reload_loop(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            waiters, self._pending = self._pending, []
            try:
                outcome = await self._reload_once()
            except Exception as exc:  # a bug must not kill reloading for good
                logger.exception("reload failed unexpectedly")
                outcome = ReloadOutcome("failed", self.mux.generation, str(exc))
            for waiter, asked_at in waiters:
                if not waiter.done():
                    waiter.set_result(_as_seen_from(asked_at, outcome))

    async def _reload_once(self) -> ReloadOutcome:
        mux = self.mux
        # Read once, off the event loop (a FIFO, a huge file, /dev/zero are refused there):
        # the digest and the parse are of the same bytes, even if the file is being
        # rewritten in place meanwhile.
        try:
            data: bytes | None = await asyncio.to_thread(read_config_file, self.path)
        except ConfigError as error:
            return self._failed(None, error)
        digest = _digest(data)
        if digest is not None and digest == self._applied_digest:
            self._forget_failure()
            return ReloadOutcome("unchanged", mux.generation)
        if digest is not None and digest == self._failed_digest:
            return ReloadOutcome("failed", mux.generation, mux.last_reload_error)
        try:
            config = await self._validated(data)
        except ConfigError as error:
            return self._failed(digest, error)
        added = sorted(set(config.models) - set(mux.config.models))
        removed = sorted(set(mux.config.models) - set(config.models))
        mux.apply(config)
        self._applied_digest, self._failed_digest = digest, None
        mux.metrics.config_reloads.labels(result="success").inc()
        logger.info(
            "config generation %d applied (added: %s; removed: %s)",
            mux.generation,
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
            extra={"event": "config_reloaded", "generation": mux.generation},
        )
        log_config_warnings(config)
        if mux.restart_required:
            logger.warning(
                "host/port changed in %s: restart aiollmux to listen there",
                self.path,
                extra={"event": "restart_required"},
            )
        return ReloadOutcome("applied", mux.generation)

    def _failed(self, digest: str | None, error: ConfigError) -> ReloadOutcome:
        mux = self.mux
        self._failed_digest = digest
        mux.last_reload_error = str(error)
        mux.metrics.config_reloads.labels(result="failure").inc()
        logger.error(
            "config reload failed; still serving generation %d: %s",
            mux.generation,
            error,
            extra={"event": "config_reload_failed", "key": error.key},
        )
        return ReloadOutcome("failed", mux.generation, str(error))

    def _forget_failure(self) -> None:
        """The file is the applied one again (a bad edit undone): no error to show."""
        if self.mux.last_reload_error is not None:
            logger.info(
                "config file is back to generation %d: last reload error cleared",
                self.mux.generation,
                extra={"event": "config_reload_error_cleared"},
            )
        self.mux.last_reload_error = None
        self._failed_digest = None

    async def _validated(self, data: bytes | None) -> Config:
        # Parsing up to 1 MiB of TOML is CPU work: off the loop, like the read.
        config = await asyncio.to_thread(load_config, self.path, data)
        load_policy(config.policy, config.source)  # a user policy must load, too
        check_listen_port(config, self.mux.listening[1])
        return config

    def _relevant(self, change: watchfiles.Change, changed: str) -> bool:
        name = Path(changed).name
        if name in (self.path.name, "..data"):
            return True
        # An editor or ConfigMap may swap the file behind a symlink. (A symlink loop is a
        # RuntimeError on Python 3.11.)
        with contextlib.suppress(OSError, RuntimeError):
            return Path(changed) == self.path.resolve()
        return False

    async def _watch(self) -> None:
        """Watch for good: a watcher that fails says so and starts again, so that edits
        are never silently ignored from then on (SIGHUP and the admin API work anyway)."""
        while True:
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "watching %s failed (%s); watching again in %.0fs",
                    self.path,
                    exc,
                    WATCH_RETRY_SECS,
                    extra={"event": "config_watch_failed"},
                )
            await asyncio.sleep(WATCH_RETRY_SECS)

    async def _watch_once(self) -> None:
        # The directory, not the file: editors save by rename, and a ConfigMap swaps a
        # `..data` symlink without any event naming the file itself.
        directories = {self.path.parent}
        with contextlib.suppress(OSError, RuntimeError):
            directories.add(self.path.resolve().parent)
        changes = watchfiles.awatch(
            *sorted(directories),
            watch_filter=self._relevant,
            debounce=DEBOUNCE_MS,
            step=WATCH_STEP_MS,
            rust_timeout=0,  # no periodic return to Python just to wait again
            recursive=False,
        )
        pending = asyncio.ensure_future(anext(changes))
        try:
            # The generator's first step registers the watches (synchronously); a change
            # made before that is caught by one look at the file right after.
            await asyncio.sleep(0)
            _ = self.trigger("the watcher starting", quiet=True)
            while True:
                await pending
                _ = self.trigger("a change of the file", quiet=True)  # nobody waits for it
                pending = asyncio.ensure_future(anext(changes))
        finally:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
            await changes.aclose()
