"""Watching the active model of a group: periodic alive checks and idle sleep (docs/design.md §7).

While the active model has nothing to do, its alive hook runs every
`alive_interval_secs`; three failures in a row mark it lost (no sleep hook), so the next
request wakes it again. After `idle_sleep_secs` without requests it is put to sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
    """Watches every awake member of one group on its own (docs/design.md §7, §8)."""

    def __init__(self, switcher: Switcher, *, alive_interval: float, idle_sleep: float) -> None:
        self.switcher = switcher
        self.alive_interval = alive_interval
        self.idle_sleep = idle_sleep
        self.ticks = 0  # how many times it looked (status and tests)
        # Per awake member: failed checks in a row, and when to check it next.
        self._failures: dict[str, int] = {}
        self._next_check: dict[str, float] = {}
        self._not_before = 0.0  # back-off after an error
        # Idle sleeps under way, one task each: a sleep waits for the switcher (another
        # member's wake, a drain), and the other members are still watched meanwhile.
        self._idle_sleeps: dict[str, asyncio.Task[None]] = {}
        self._backoff = ERROR_BACKOFF_SECS
        self._soon = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def failures(self) -> int:
        """Failed checks in a row of the most recently activated member."""
        active = self.switcher.active
        return 0 if active is None else self._failures.get(active, 0)

    def start(self) -> None:
        if self._task is None and (self.alive_interval > 0 or self.idle_sleep > 0):
            self.switcher.subscribe(self._soon.set)
            self._task = asyncio.create_task(self._run(), name=f"health-{self.switcher.group}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        sleeps = list(self._idle_sleeps.values())
        for task in sleeps:
            task.cancel()
        await asyncio.gather(*sleeps, return_exceptions=True)

    def configure(self, *, alive_interval: float, idle_sleep: float) -> None:
        """A reload changed the periods: they apply from now on."""
        if (alive_interval, idle_sleep) == (self.alive_interval, self.idle_sleep):
            return
        self.alive_interval = alive_interval
        self.idle_sleep = idle_sleep
        now = self.switcher.clock()
        for model in self._next_check:
            self._next_check[model] = now + alive_interval
        if self._task is None:
            self.start()
        self._soon.set()

    def check_soon(self, model: str | None = None) -> None:
        """An awake backend just failed a request: check it now, not at the interval."""
        model = model if model is not None else self.switcher.active
        if model is not None and model in self._next_check:
            self._next_check[model] = 0.0
        self._soon.set()

    async def _run(self) -> None:
        while True:
            self._follow_awake()
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

    def _follow_awake(self) -> None:
        """Start watching members that woke, forget those that went to sleep."""
        awake = self.switcher.awake
        now = self.switcher.clock()
        for model in list(self._next_check):
            if model not in awake:
                del self._next_check[model]
                self._failures.pop(model, None)
        for model in awake:
            if model not in self._next_check:
                self._next_check[model] = now + self.alive_interval
                self._failures[model] = 0

    def _next_due(self) -> float:
        switcher = self.switcher
        now = switcher.clock()
        due = [now + 3600.0]  # nothing to watch: the switcher wakes us when that changes
        for model in switcher.awake:
            if model in self._idle_sleeps:
                continue  # its sleep's end wakes us (`_idle_sleep_done`)
            if self.alive_interval > 0:
                due.append(self._next_check.get(model, now))
            if self.idle_sleep > 0:
                # Busy now: look again no sooner than a whole idle period from now.
                busy = switcher.is_busy(model)
                since = now if busy else switcher.member_last_activity(model)
                due.append(since + self.idle_sleep)
        return max(min(due), self._not_before)

    async def _tick(self) -> None:
        self._follow_awake()
        switcher = self.switcher
        for model in switcher.awake:
            if model not in switcher.awake or model in self._idle_sleeps:
                continue  # put to sleep while another member was looked at, or going
            now = switcher.clock()
            idle_for = now - switcher.member_last_activity(model)
            if self.idle_sleep > 0 and idle_for >= self.idle_sleep and not switcher.is_busy(model):
                self._start_idle_sleep(model)
            elif self.alive_interval > 0 and now >= self._next_check.get(model, now):
                await self._check_alive(model)

    @property
    def idle_sleeps(self) -> frozenset[str]:
        """Members whose idle sleep is under way (waiting for the switcher, or running)."""
        return frozenset(self._idle_sleeps)

    def _start_idle_sleep(self, model: str) -> None:
        task = asyncio.create_task(self._sleep_idle(model), name=f"idle-sleep-{model}")
        self._idle_sleeps[model] = task
        task.add_done_callback(functools.partial(self._idle_sleep_done, model))

    def _idle_sleep_done(self, model: str, task: asyncio.Task[None]) -> None:
        if self._idle_sleeps.get(model) is task:
            del self._idle_sleeps[model]
        if not task.cancelled() and task.exception() is not None:
            logger.warning(
                "idle sleep of %r did not happen: %s",
                model,
                task.exception(),
                extra={"model": model},
            )
        self._soon.set()  # look at the group again

    async def _sleep_idle(self, model: str) -> None:
        switcher = self.switcher
        since = switcher.member_last_activity(model)
        logger.info(
            "model %r idle for %.0fs; putting it to sleep",
            model,
            self.idle_sleep,
            extra={"event": "idle_sleep", "model": model},
        )

        # A request that came in meanwhile keeps the model awake. (Checked when the
        # driver takes this up, and again once min_active_secs has passed.)
        def moved_on() -> bool:
            return model not in switcher.awake or switcher.member_last_activity(model) != since

        if switcher.memory_gb is None:
            await switcher.switch_to(None, unless=moved_on)
        else:
            await switcher.put_to_sleep(model, unless=moved_on)

    async def _check_alive(self, model: str) -> None:
        switcher = self.switcher
        if switcher.is_busy(model):
            self._next_check[model] = switcher.clock() + self.alive_interval
            return
        changes = switcher.changes
        result = await switcher.probe_alive(model)
        if model not in switcher.awake or switcher.changes != changes or switcher.is_busy(model):
            # The world moved on while the hook ran (a switch began, say: the backend may
            # be going to sleep): the answer is moot, and is not counted as a failure.
            self._next_check[model] = switcher.clock() + self.alive_interval
            return
        if result.resource_exhausted:
            # The hook could not even start (out of fds, say): no news about the model.
            # Logged by the hook runner (rate-limited); look again after a back-off.
            self._back_off()
            self._next_check[model] = self._not_before
            return
        switcher.hooks.report(result)
        if result.ok:
            self._failures[model] = 0
            self._next_check[model] = switcher.clock() + self.alive_interval
            return
        failures = self._failures[model] = self._failures.get(model, 0) + 1
        self._next_check[model] = switcher.clock() + min(self.alive_interval, RECHECK_SECS)
        logger.warning(
            "alive check of %r failed (%d of %d): %s",
            model,
            failures,
            LOST_AFTER_FAILURES,
            result.describe(),
            extra={"event": "alive_check_failed", "model": model},
        )
        if failures >= LOST_AFTER_FAILURES and switcher.mark_lost(model):
            logger.error(
                "model %r lost: alive hook failed %d times in a row: %s",
                model,
                failures,
                result.describe(),
                extra={"event": "model_lost", "model": model},
            )
            self._failures[model] = 0
