"""One GPU group's driver: which members are awake, and the switches between them.

Request handlers only `acquire()` a guard and await it; every switch runs in the
switcher's own driver task, one at a time, so a cancelled handler can never leave a
switch half done (docs/design.md). The queues and in-flight guards are kept by
`aiollmux.admission`; the switcher takes commands and gives read-only views.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

from aiollmux.admission import InFlightGuard, Member, StartingRequests, abandon
from aiollmux.config import GroupConfig, ModelConfig, PolicyConfig
from aiollmux.errors import ModelNotFound, ModelTimeout, QueueFull, ServiceStopping, WakeFailed
from aiollmux.eviction import EPSILON_GB, choose_victims
from aiollmux.free_memory import wait_for_free_memory
from aiollmux.group_state import (
    GroupView,
    MemberView,
    ModelStatus,
    SwitcherState,
    Transition,
)
from aiollmux.hooks import HookResult, HookRunner
from aiollmux.metrics import Metrics
from aiollmux.policy import (
    Decision,
    Policy,
    PolicyContext,
    QueueView,
    VictimView,
    next_ask,
)
from aiollmux.switch_costs import IDLE, SwitchCosts

__all__ = [
    "BACKOFF_SECS",
    "MIN_RETRY_SECS",
    "ExclusiveGate",
    "GroupView",
    "InFlightGuard",
    "MemberView",
    "ModelStatus",
    "Switcher",
    "Transition",
]

logger = logging.getLogger(__name__)

BACKOFF_SECS = 2.0
MIN_RETRY_SECS = 0.01  # the soonest a policy's deferral is honoured


class ExclusiveGate(Protocol):
    """What an exclusive group's switch uses to clear the GPU of other groups' models."""

    lock: asyncio.Lock

    async def clear_others(self, switcher: Switcher) -> None: ...


class _ForcedSwitch(NamedTuple):
    target: str | None
    done: asyncio.Future[None]
    unless: Callable[[], bool] | None
    only: str | None = None  # with target None: put only this member to sleep


class Switcher(SwitcherState):
    """Keeps a group's awake members and routes requests to them: one member awake at a
    time, or as many as fit in the group's memory budget (docs/design.md §8); a switch drains and
    sleeps what must make room before the target wakes."""

    def __init__(
        self,
        *,
        group: str,
        models: Mapping[str, ModelConfig],
        policy_config: PolicyConfig,
        policy: Policy,
        hooks: HookRunner,
        costs: SwitchCosts,
        metrics: Metrics,
        base_dir: Path,
        settings: GroupConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            group=group,
            settings=settings,
            policy_config=policy_config,
            hooks=hooks,
            base_dir=base_dir,
            clock=clock,
        )
        self._policy = policy
        self._costs = costs
        self._metrics = metrics
        self._kick = asyncio.Event()
        # Switches and sleeps asked for by name (admin API, idle sleep), ahead of the policy.
        self._forced: deque[_ForcedSwitch] = deque()
        self._forced_now: _ForcedSwitch | None = None  # the one being carried out
        self._starting = StartingRequests()
        # Held while this group runs a wake or sleep hook: another group's exclusive
        # switch takes it too, to sleep our model (docs/design.md §8).
        self._hook_lock = asyncio.Lock()
        self._exclusive_gate: ExclusiveGate | None = None  # set for exclusive groups
        self._on_change: list[Callable[[], None]] = []  # called when the awake set changes
        self._retry_handle: asyncio.TimerHandle | None = None
        self._driver: asyncio.Task[None] | None = None
        self._closed = False
        for config in models.values():
            self._add_member(config)
        self._memory_changed()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._driver is None:
            self._driver = asyncio.create_task(self._drive(), name=f"switcher-{self._group}")

    async def close(self) -> None:
        """Stop switching; every queued request fails with 503."""
        self._closed = True
        # The forced switch under way (if any) is forgotten by the driver as it stops.
        pending = [*([self._forced_now] if self._forced_now is not None else []), *self._forced]
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        if self._driver is not None:
            self._driver.cancel()
            await asyncio.gather(self._driver, return_exceptions=True)
            self._driver = None
        for member in self._members.values():
            member.fail_waiters(lambda: ServiceStopping("aiollmux is shutting down"))
        self._forced.clear()
        for item in pending:
            if not item.done.done():
                item.done.set_exception(ServiceStopping("aiollmux is shutting down"))

    def adopt(self, model: str) -> None:
        """Mark a model that is already awake as active without running its wake hook;
        requests queued for it are let in."""
        self._set_active(model)
        member = self._members[model]
        if member.waiters and not member.draining:
            member.release_waiters(self._starting)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever the set of awake members changes."""
        self._on_change.append(callback)

    def set_exclusive_gate(self, gate: ExclusiveGate | None) -> None:
        """Exclusive groups clear the other groups' models through `gate` (docs/design.md §8)."""
        self._exclusive_gate = gate

    def reconsider(self) -> None:
        """Ask the policy again now (its answer may have changed)."""
        self._kick.set()

    async def probe_alive(self, model: str) -> HookResult:
        """Run `model`'s alive hook (not reported: the caller decides whether it counts)."""
        return await self._hooks.run(
            self._members[model].config, "alive", self._base_dir, report=False
        )

    # -- reconfiguration (docs/design.md §6) ---------------------------------------------------

    def configure(
        self,
        *,
        policy_config: PolicyConfig,
        policy: Policy,
        base_dir: Path,
        settings: GroupConfig | None = None,
    ) -> None:
        """A reload: the next decision uses the new policy, the next hook the new dir; a
        lowered budget puts members to sleep until the group fits (docs/design.md §8)."""
        self._policy_config = policy_config
        self._policy = policy
        self._base_dir = base_dir
        if settings is not None:
            self._settings = settings
        self._memory_changed()
        self._kick.set()

    def put_model(self, config: ModelConfig, *, after: asyncio.Future[None] | None = None) -> None:
        """Add a model, or give an existing one its new settings (used from the next
        hook run and the next forwarded request on). `after`: it comes from another
        group, whose sleep of it must end before it is woken here."""
        member = self._members.get(config.id)
        if member is not None:
            # Back before its retirement finished: keep the member (and its guards).
            member.config = config
            member.retired = False
            self._memory_changed()
            self._kick.set()  # a larger memory_gb may no longer fit
            return
        self._add_member(config, after)

    def _add_member(self, config: ModelConfig, after: asyncio.Future[None] | None = None) -> None:
        self._members[config.id] = Member(
            config=config,
            metrics=self._metrics,
            clock=self._clock,
            on_release=self._released,
            arrival=after,
        )
        for gauge in (
            self._metrics.active_model,
            self._metrics.in_flight,
            self._metrics.queue_depth,
        ):
            gauge.labels(model=config.id).set(0)

    async def retire(self, model: str) -> None:
        """The model left the configuration: fail its queue with 404, drain and sleep it
        with its old hooks if it is awake (or about to be), then forget it."""
        member = self._members.get(model)
        if member is None or member.retired:
            return
        member.retired = True
        message = f"model {model!r} was removed from the configuration"
        member.fail_waiters(lambda: ModelNotFound(message))
        waking = self._switching is not None and self._switching.target == model
        if model in self._awake or waking:
            await self.put_to_sleep(
                model, unless=lambda: model not in self._awake or not member.retired
            )
        if self._members.get(model) is member and member.retired:
            del self._members[model]
            member.forgotten = True
            self._metrics.forget_model(model)

    # -- requests ----------------------------------------------------------------------

    def try_admit(self, model: str) -> InFlightGuard | None:
        """The fast path, without a coroutine: a guard if `model` is awake and free."""
        member = self._members.get(model)
        if (
            member is None
            or model not in self._awake
            or member.draining
            or member.retired
            or member.waiters
            or self._closed
        ):
            return None
        return member.admit()

    async def acquire(self, model: str) -> InFlightGuard:
        """Wait until `model` is awake and count one request in flight on it."""
        member = self._members.get(model)
        if member is None or member.retired:
            raise ModelNotFound(f"model {model!r} was removed from the configuration")
        if self._closed:
            raise ServiceStopping("aiollmux is shutting down")
        if model in self._awake and not member.draining and not member.waiters:
            return member.admit()
        limit = self._policy_config.max_queued_requests
        if limit and len(member.waiters) >= limit:
            estimate = self._costs.estimate(self.active, model) or 1.0
            raise QueueFull(
                f"model {model!r} already has {len(member.waiters)} queued requests", estimate
            )
        waiter = member.enqueue()
        self._kick.set()
        guard: InFlightGuard | None = None
        try:
            async with asyncio.timeout(self._policy_config.request_timeout_secs):
                guard = await waiter.future
        except TimeoutError:
            waited = self._clock() - waiter.since
            logger.warning(
                "request for %r timed out after %.1fs waiting for the model",
                model,
                waited,
                extra={"event": "request_timeout", "model": model, "waited": round(waited, 3)},
            )
            raise ModelTimeout(
                f"timed out after {waited:.0f}s waiting for model {model!r} to become ready"
            ) from None
        finally:
            if guard is None:
                abandon(waiter)
            member.forget(waiter)
            if waiter.released:  # resumed (or gave up): no longer starting
                self._starting.done()
        return guard

    def _released(self, member: Member, guard: InFlightGuard) -> None:
        if member.in_flight == 0 and self._anyone_waiting():
            self._kick.set()  # a policy may have been waiting for this model to idle

    async def switch_to(
        self, model: str | None, *, unless: Callable[[], bool] | None = None
    ) -> None:
        """Make `model` active (None: put the awake members to sleep), bypassing the policy.

        Raises `WakeFailed` when the wake hook fails. Runs in the driver, so it is
        ordered with every other switch of the group; `unless`, checked there right
        before acting, cancels the operation when it has become true.
        """
        if self._closed:
            raise ServiceStopping("aiollmux is shutting down")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._forced.append(_ForcedSwitch(model, done, unless))
        self._kick.set()
        await done

    async def put_to_sleep(self, model: str, *, unless: Callable[[], bool] | None = None) -> None:
        """Drain and sleep one member if it is awake (an admin sleep of a model, idle
        sleep, a removal); ordered with the group's switches like `switch_to`."""
        if self._closed:
            raise ServiceStopping("aiollmux is shutting down")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._forced.append(_ForcedSwitch(None, done, unless, model))
        self._kick.set()
        await done

    def mark_lost(self, model: str) -> bool:
        """An awake model died on its own: forget it without running its sleep hook."""
        if model not in self._members or model not in self._awake or self.is_busy(model):
            return False
        self._set_inactive(model)
        self._kick.set()
        return True

    def _anyone_waiting(self) -> bool:
        return bool(self._forced) or any(m.waiters for m in self._members.values())

    # -- the driver --------------------------------------------------------------------

    async def _drive(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("switcher of group %r failed; continuing", self._group)
                # Requests may still wait (a policy that raised, say): ask again later.
                self._retry_at(self._clock() + BACKOFF_SECS)

    async def _step(self) -> None:
        while self._forced:
            await self._carry_out(self._forced.popleft())
        await self._make_fit()
        for model in self.awake:
            member = self._members.get(model)
            if member is not None and member.waiters and not member.draining:
                member.release_waiters(self._starting)
        context = self._context()
        if context.target is None:
            return
        now = self._clock()
        if now < self._backoff_until:
            self._retry_at(self._backoff_until)
            return
        if self._fits_now(context.target):
            # Waking it puts nothing to sleep: no one gains from waiting (docs/design.md §8).
            decision = Decision.switch(context.target)
        else:
            decision = self._policy.decide(context)
        target = decision.target
        if (
            decision.action == "switch"
            and target in self._members
            and target not in self._awake
            and not self._members[target].retired
        ):
            with contextlib.suppress(ModelNotFound):  # removed while the lock was awaited
                await self._switch(target)
            self._kick.set()  # others may be waiting: ask again
            return
        ask_again = next_ask(decision, now, self._policy.tick_interval)
        if ask_again is not None:
            # A deferral to now (or the past) would spin the loop: ask a little later.
            self._retry_at(max(ask_again, now + MIN_RETRY_SECS))

    async def _carry_out(self, item: _ForcedSwitch) -> None:
        self._forced_now = item
        target, done, unless, only = item
        try:
            if unless is not None and unless():
                error: Exception | None = None
            elif only is not None:
                await self._sleep_one(only, unless)
                error = None
            else:
                error = await self._forced_switch(target, unless)
        except ModelNotFound as exc:  # removed by a reload while it waited for the lock
            error = exc
        except asyncio.CancelledError:
            raise  # close() fails `done`
        except Exception as exc:  # whoever asked hears of it, then the driver logs it
            if not done.done():
                done.set_exception(exc)
            raise
        finally:
            self._forced_now = None
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def _retry_at(self, when: float) -> None:
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        delay = max(0.0, when - self._clock())
        self._retry_handle = asyncio.get_running_loop().call_later(delay, self._kick.set)

    def _context(self) -> PolicyContext:
        now = self._clock()
        queues: dict[str, QueueView] = {}
        target: str | None = None
        oldest = float("inf")
        for name, member in self._members.items():
            live = [w for w in member.waiters if not w.future.done()]
            first = live[0].since if live else now
            queues[name] = QueueView(
                model=name, queued=len(live), oldest_wait=now - first, in_flight=member.in_flight
            )
            if live and name not in self._awake and first < oldest and not member.retired:
                target, oldest = name, first
        active = self.active
        active_member = self._members.get(active) if active is not None else None
        return PolicyContext(
            now=now,
            target=target,
            active_model=active,
            active_for=now - self.activated_at if active is not None else 0.0,
            queues=queues,
            switch_cost=self._costs.estimate,
            active_idle_for=(
                now - active_member.last_activity
                if active_member is not None and active_member.in_flight == 0
                else 0.0
            ),
        )

    async def _forced_switch(
        self, target: str | None, unless: Callable[[], bool] | None
    ) -> Exception | None:
        if target is not None and target in self._awake:
            return None
        if target is None:
            await self.yield_gpu(unless=unless)
            return None
        failure = await self._switch(target)
        return None if failure is None else WakeFailed(failure)

    async def _sleep_one(self, model: str, unless: Callable[[], bool] | None) -> None:
        async with self._hook_lock:
            if model not in self._awake:
                return
            self._switching = Transition(model, None)
            try:
                await self._put_to_sleep(model, None, unless)
            finally:
                self._switching = None

    async def _make_fit(self) -> None:
        """After a reload: put members to sleep (policy order) until the group fits its
        budget again; without a budget, keep only the most recently activated one."""
        while self._over_budget():
            async with self._hook_lock:
                victims = self._victims(None)
                if not victims:
                    return
                self._switching = Transition(victims[0], None)
                try:
                    await self._put_to_sleep(victims[0], None)
                finally:
                    self._switching = None

    def _victims(self, target: str | None) -> list[str]:
        """Awake members to put to sleep so that `target` (None: nothing) fits, in the
        order to sleep them: the policy's order, idle members before busy ones, only as
        many as needed (docs/design.md §8). Without a budget: every other awake member."""
        awake = [name for name in self._awake if name != target and name in self._members]
        budget = self.memory_gb
        if budget is None:
            keep = 0 if target is not None else 1  # an over-full group keeps its newest
            return awake[: len(awake) - keep] if keep else awake
        needed = self._memory_of(target) + (self.memory_used_gb() or 0.0) - budget
        if needed <= EPSILON_GB:
            return []
        now = self._clock()
        views = [
            VictimView(
                model=name,
                memory_gb=self._memory_of(name),
                idle_for=now - self._members[name].last_activity,
                in_flight=self._members[name].in_flight,
                queued=self._members[name].queued,
                demand=self._members[name].demand(now),
                bring_back_cost=self._costs.estimate(None, name),
            )
            for name in awake
        ]
        return choose_victims(self._policy, views, self._context(), needed)

    def _fits_now(self, target: str) -> bool:
        """A budget group can wake `target` without putting anything to sleep."""
        return self.memory_gb is not None and not self._victims(target)

    async def yield_gpu(self, *, unless: Callable[[], bool] | None = None) -> None:
        """Drain and sleep the awake members (an admin sleep, idle sleep, a removal, or
        another group's exclusive switch); not if `unless` has become true by the time
        the drain would begin (min_active_secs may have passed meanwhile)."""
        async with self._hook_lock:
            if not self._awake:
                return
            try:
                for source in self.awake:
                    self._switching = Transition(source, None)
                    await self._put_to_sleep(source, None, unless)
            finally:
                self._switching = None
                # Called from outside the driver too (another group's exclusive switch):
                # requests that queued meanwhile were not a target then; they are now.
                if self._anyone_waiting():
                    self._kick.set()

    # -- switching ---------------------------------------------------------------------

    async def _switch(self, target: str) -> str | None:
        """Sleep what must make room, wake `target`; the failure message, if any."""
        member = self._members.get(target)
        if member is not None and member.arrival is not None:
            # Moved here by a reload: its old group puts it to sleep first. Waited for with
            # no lock held: that group may be in an exclusive switch that needs our lock.
            await asyncio.wait({member.arrival})
            member.arrival = None
        gate = self._exclusive_gate
        if gate is None:
            async with self._hook_lock:
                return await self._switch_locked(target)
        # One exclusive switch at a time, and its lock before our own: two exclusive
        # groups can then never wait for each other's locks.
        async with gate.lock, self._hook_lock:
            return await self._switch_locked(target)

    async def _switch_locked(self, target: str) -> str | None:
        member = self._members.get(target)
        if member is None or member.retired:  # a reload removed it while we waited
            raise ModelNotFound(f"model {target!r} was removed from the configuration")
        if member.arrival is not None:
            await asyncio.wait({member.arrival})  # its old group puts it to sleep first
            member.arrival = None
        victims = self._victims(target)
        source = victims[-1] if victims else None
        self._switching = Transition(victims[0] if victims else None, target)
        labels = {"from": source or IDLE, "to": target}
        logger.info(
            "switching %s -> %s",
            source or IDLE,
            target,
            extra={"event": "switch_started", **labels, "group": self._group},
        )
        # The switch's cost is the time the GPU was unavailable: sleep hooks, the
        # free-memory wait and the wake hook; not min_active_secs nor the drain.
        try:
            source, unavailable = await self._make_room(target, victims, source)
            self._occupying = target
            self._memory_changed()
            started = self._clock()
            problem = await self._check_free_memory(target)
            unavailable += self._clock() - started
            if problem is not None:
                return self._probe_failed(target, source, problem)
            started = self._clock()
            wake = await self._run_hook(target, "wake")
            unavailable += self._clock() - started
            if wake.ok:
                self._activated(target, source, unavailable)
                return None
            return await self._wake_failed(target, source, wake)
        finally:
            self._switching = None
            if self._occupying is not None:
                self._occupying = None
                self._memory_changed()

    async def _make_room(
        self, target: str, victims: list[str], source: str | None
    ) -> tuple[str | None, float]:
        """Put `victims` to sleep, then whatever a reload made too big meanwhile, and in an
        exclusive group the other groups' models: the last member put to sleep and the
        hooks' time."""
        unavailable = 0.0
        while True:
            while victims:
                for victim in victims:
                    self._switching = Transition(victim, target)
                    unavailable += await self._put_to_sleep(victim, target)
                    source = victim
                victims = self._victims(target)  # a reload may have changed the sizes
            self._switching = Transition(source, target)
            if self._exclusive_gate is None:
                return source, unavailable
            await self._exclusive_gate.clear_others(self)
            victims = self._victims(target)  # the same, while the other groups slept
            if not victims:
                return source, unavailable

    async def _check_free_memory(self, target: str) -> str | None:
        command = self._settings.free_memory
        if command is None:
            return None
        return await wait_for_free_memory(
            command,
            group=self._group,
            needed_gb=self._memory_of(target),
            within=self._settings.free_memory_timeout_secs,
            cwd=self._base_dir,
            withheld=self._hooks.withheld,
        )

    def _probe_failed(self, target: str, source: str | None, problem: str) -> str:
        """Not enough free memory: the wake hook never ran, so no clean-up sleep runs."""
        labels = {"from": source or IDLE, "to": target}
        self._metrics.switch_total.labels(**labels, result="failure").inc()
        logger.error(
            "switch to %r failed: %s", target, problem, extra={"event": "switch_failed", **labels}
        )
        self._backoff_until = self._clock() + BACKOFF_SECS
        message = f"wake failed: {problem}"
        self._members[target].fail_waiters(lambda: WakeFailed(message))
        return message

    async def _put_to_sleep(
        self, source: str, target: str | None, unless: Callable[[], bool] | None = None
    ) -> float:
        """Drain and sleep `source`, unless `unless` has become true before it began; the
        seconds its sleep hook took."""
        member = self._members[source]
        activated = self._awake.get(source)
        if activated is None:  # marked lost since it was chosen: nothing left to put to sleep
            return 0.0
        remaining = self._policy_config.min_active_secs - (self._clock() - activated)
        if remaining > 0:
            await asyncio.sleep(remaining)
        # Requests just let in must be on their way before the model is marked draining.
        await self._starting.wait()
        if source not in self._awake or (unless is not None and unless()):
            return 0.0
        member.draining = True
        slept = False
        try:
            await self._drain(member, target)
            slept = True  # from here on the model counts as asleep, whatever happens
            started = self._clock()
            sleep = await self._run_hook(source, "sleep")
            if not sleep.ok:
                logger.warning(
                    "sleep hook of %r failed; switching anyway: %s",
                    source,
                    sleep.describe(),
                    extra={"event": "sleep_hook_failed", "model": source},
                )
            return self._clock() - started
        finally:
            member.draining = False
            if slept:  # cancelled in the drain (shutdown): still awake, still active
                self._set_inactive(source)

    async def _drain(self, member: Member, target: str | None) -> None:
        if not self._policy_config.drain_before_switch or member.in_flight == 0:
            return
        started = self._clock()
        limit = self._policy_config.drain_timeout_secs
        try:
            async with asyncio.timeout(limit if limit > 0 else None):
                await member.idle.wait()
        except TimeoutError:
            logger.warning(
                "drain of %r timed out after %.1fs; cutting %d requests",
                member.model,
                limit,
                member.in_flight,
                extra={"event": "drain_timeout", "model": member.model},
            )
            member.cut_all()
            await member.idle.wait()
        self._metrics.switch_drain_duration.labels(
            **{"from": member.model, "to": target or IDLE}
        ).observe(self._clock() - started)

    async def _run_hook(self, model: str, hook: Literal["wake", "sleep", "alive"]) -> HookResult:
        self._hook_running = (model, hook)
        try:
            return await self._hooks.run(self._members[model].config, hook, self._base_dir)
        finally:
            self._hook_running = None

    def _activated(self, target: str, source: str | None, seconds: float) -> None:
        labels = {"from": source or IDLE, "to": target}
        ema = self._costs.record(source, target, seconds)
        self._metrics.switch_total.labels(**labels, result="success").inc()
        self._metrics.switch_duration.labels(**labels).observe(seconds)
        self._metrics.switch_cost_ema.labels(**labels).set(ema)
        self._set_active(target)
        logger.info(
            "model %r active after %.2fs",
            target,
            seconds,
            extra={"event": "model_activated", **labels, "seconds": round(seconds, 3)},
        )
        self._members[target].release_waiters(self._starting)

    async def _wake_failed(self, target: str, source: str | None, wake: HookResult) -> str:
        labels = {"from": source or IDLE, "to": target}
        self._metrics.switch_total.labels(**labels, result="failure").inc()
        logger.error(
            "switch to %r failed: %s",
            target,
            wake.describe(),
            extra={"event": "switch_failed", **labels},
        )
        cleanup = await self._run_hook(target, "sleep")
        self._occupying = None
        self._memory_changed()
        if not cleanup.ok:
            logger.warning(
                "clean-up sleep hook of %r failed: %s",
                target,
                cleanup.describe(),
                extra={"event": "sleep_hook_failed", "model": target},
            )
        self._backoff_until = self._clock() + BACKOFF_SECS
        message = f"wake failed: {wake.describe()}"
        self._members[target].fail_waiters(lambda: WakeFailed(message))
        return message

    def _set_active(self, model: str) -> None:
        now = self._clock()
        self._awake.pop(model, None)
        self._awake[model] = now
        self._members[model].last_activity = now
        self._metrics.active_model.labels(model=model).set(1)
        self._changed()

    def _memory_changed(self) -> None:
        self._metrics.group_memory(self._group, self.memory_gb, self.memory_used_gb())

    def _changed(self) -> None:
        self._memory_changed()
        self._changes += 1
        for callback in self._on_change:
            callback()

    def _set_inactive(self, model: str) -> None:
        activated = self._awake.pop(model, None)
        if activated is not None:
            self._metrics.model_active_duration.labels(model=model).observe(
                self._clock() - activated
            )
            if not self._awake:
                self._idle_since = self._members[model].last_activity
            self._changed()
        self._metrics.active_model.labels(model=model).set(0)
