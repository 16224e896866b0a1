"""Watching the active model of a group: periodic alive checks and idle sleep (DESIGN §7).

While the active model has nothing to do, its alive hook runs every
`alive_interval_secs`; three failures in a row mark it lost (no sleep hook), so the next
request wakes it again. After `idle_sleep_secs` without requests it is put to sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiollmux.ratelimit import RateLimitedLog, resource_cause
from aiollmux.switcher import Switcher

logger = logging.getLogger(__name__)
_errors = RateLimitedLog(logger, 10.0)

LOST_AFTER_FAILURES = 3
# After a failed check, look again this soon (or at the interval, if shorter), so a
# crashed backend is noticed in seconds rather than three whole intervals.
RECHECK_SECS = 2.0
# After an error in the monitor itself (out of fds, say), or an alive hook that could not
# be started: the next look waits this long (doubling up to the maximum), never less.
ERROR_BACKOFF_SECS = 1.0
ERROR_BACKOFF_MAX_SECS = 30.0


class HealthMonitor:
    def __init__(self, switcher: Switcher, *, alive_interval: float, idle_sleep: float) -> None:
        self.switcher = switcher
        self.alive_interval = alive_interval
        self.idle_sleep = idle_sleep
        self.failures = 0
        self.ticks = 0  # how many times it looked (status and tests)
        self._checked_model: str | None = None
        self._next_check = 0.0
        self._not_before = 0.0  # back-off after an error
        self._backoff = ERROR_BACKOFF_SECS
        self._soon = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and (self.alive_interval > 0 or self.idle_sleep > 0):
            self.switcher.on_change.append(self._soon.set)
            self._task = asyncio.create_task(self._run(), name=f"health-{self.switcher.group}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def configure(self, *, alive_interval: float, idle_sleep: float) -> None:
        """A reload changed the periods: they apply from now on."""
        if (alive_interval, idle_sleep) == (self.alive_interval, self.idle_sleep):
            return
        self.alive_interval = alive_interval
        self.idle_sleep = idle_sleep
        self._next_check = self.switcher.clock() + alive_interval
        if self._task is None:
            self.start()
        self._soon.set()

    def check_soon(self) -> None:
        """The active backend just failed a request: check it now, not at the interval."""
        self._next_check = 0.0
        self._soon.set()

    async def _run(self) -> None:
        while True:
            delay = self._next_due() - self.switcher.clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._soon.wait()
            else:
                await asyncio.sleep(0)  # never a loop without a yield
            self._soon.clear()
            if self.switcher.clock() < self._not_before:
                continue  # backing off: a nudge (`_soon`) does not cut it short
            self.ticks += 1
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._back_off()
                _errors.log(
                    resource_cause(exc),
                    logging.ERROR,
                    "health monitor of group %r failed; next look in %.0fs",
                    self.switcher.group,
                    self._not_before - self.switcher.clock(),
                    exc_info=True,
                    extra={"event": "health_monitor_failed", "group": self.switcher.group},
                )
            else:
                if self._not_before <= self.switcher.clock():  # not backing off from this tick
                    self._backoff = ERROR_BACKOFF_SECS

    def _back_off(self) -> None:
        self._not_before = self.switcher.clock() + self._backoff
        self._backoff = min(self._backoff * 2, ERROR_BACKOFF_MAX_SECS)

    def _next_due(self) -> float:
        switcher = self.switcher
        now = switcher.clock()
        due = [now + 3600.0]  # nothing to watch: the switcher wakes us when that changes
        if switcher.active is not None:
            if self.alive_interval > 0:
                due.append(self._next_check)
            if self.idle_sleep > 0:
                # Busy now: look again no sooner than a whole idle period from now.
                since = now if switcher.is_busy() else switcher.last_activity
                due.append(since + self.idle_sleep)
        return max(min(due), self._not_before)

    async def _tick(self) -> None:
        switcher = self.switcher
        model = switcher.active
        if model != self._checked_model:
            self._checked_model, self.failures = model, 0
            self._next_check = switcher.clock() + self.alive_interval
        if model is None:
            return
        now = switcher.clock()
        idle_for = now - switcher.last_activity
        if self.idle_sleep > 0 and idle_for >= self.idle_sleep and not switcher.is_busy():
            await self._sleep_idle(model)
        elif self.alive_interval > 0 and now >= self._next_check:
            await self._check_alive(model)

    async def _sleep_idle(self, model: str) -> None:
        switcher = self.switcher
        since = switcher.last_activity
        logger.info(
            "model %r idle for %.0fs; putting it to sleep",
            model,
            self.idle_sleep,
            extra={"event": "idle_sleep", "model": model},
        )
        await switcher.switch_to(
            None,
            # A request that came in meanwhile keeps the model awake. (Checked when the
            # driver takes this up, and again once min_active_secs has passed.)
            unless=lambda: switcher.active != model or switcher.last_activity != since,
        )

    async def _check_alive(self, model: str) -> None:
        switcher = self.switcher
        if switcher.is_busy():
            self._next_check = switcher.clock() + self.alive_interval
            return
        changes = switcher.changes
        config = switcher.models[model].config
        result = await switcher.hooks.run(config, "alive", switcher.base_dir, report=False)
        if switcher.active != model or switcher.changes != changes or switcher.is_busy():
            # The world moved on while the hook ran (a switch began, say: the backend may
            # be going to sleep): the answer is moot, and is not counted as a failure.
            self._next_check = switcher.clock() + self.alive_interval
            return
        if result.resource_exhausted:
            # The hook could not even start (out of fds, say): no news about the model.
            # Logged by the hook runner (rate-limited); look again after a back-off.
            self._back_off()
            self._next_check = self._not_before
            return
        switcher.hooks.report(result)
        if result.ok:
            self.failures = 0
            self._next_check = switcher.clock() + self.alive_interval
            return
        self.failures += 1
        self._next_check = switcher.clock() + min(self.alive_interval, RECHECK_SECS)
        logger.warning(
            "alive check of %r failed (%d of %d): %s",
            model,
            self.failures,
            LOST_AFTER_FAILURES,
            result.describe(),
            extra={"event": "alive_check_failed", "model": model},
        )
        if self.failures >= LOST_AFTER_FAILURES and switcher.mark_lost(model):
            logger.error(
                "model %r lost: alive hook failed %d times in a row: %s",
                model,
                self.failures,
                result.describe(),
                extra={"event": "model_lost", "model": model},
            )
            self.failures = 0
