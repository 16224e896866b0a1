"""One GPU group's state machine: idle / active / switching, queues and in-flight guards.

Request handlers only `acquire()` a guard and await it; every switch runs in the
switcher's own driver task, one at a time, so a cancelled handler can never leave a
switch half done (DESIGN §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

from aiollmux.config import ModelConfig, PolicyConfig
from aiollmux.cost import IDLE, SwitchCosts
from aiollmux.errors import ModelNotFound, ModelTimeout, QueueFull, ServiceStopping, WakeFailed
from aiollmux.hooks import HookResult, HookRunner
from aiollmux.metrics import Metrics
from aiollmux.policy import Policy, PolicyContext, QueueView, next_ask

logger = logging.getLogger(__name__)

BACKOFF_SECS = 2.0
MIN_RETRY_SECS = 0.01  # the soonest a policy's deferral is honoured

ModelStatus = Literal["active", "asleep", "waking", "sleeping", "draining"]


class InFlightGuard:
    """One request counted in flight on a model; `release()` is idempotent."""

    __slots__ = ("_switcher", "model", "on_cut", "released", "was_cut")

    def __init__(self, switcher: Switcher, model: str) -> None:
        self._switcher = switcher
        self.model = model
        self.released = False
        self.was_cut = False
        # Set by the proxy: ends the client's connection and the upstream request.
        self.on_cut: Callable[[], None] | None = None

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._switcher._release(self)

    def cut(self) -> None:
        """End the request now (drain timeout); its handler unwinds and releases us."""
        self.was_cut = True
        if self.on_cut is not None:
            self.on_cut()
        else:
            self.release()


@dataclass(slots=True, eq=False)
class _Waiter:
    future: asyncio.Future[InFlightGuard]
    since: float
    released: bool = False  # handed a guard by _release_waiters


@dataclass(slots=True, eq=False)
class _ModelRuntime:
    config: ModelConfig
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: deque[_Waiter] = field(default_factory=deque)
    guards: set[InFlightGuard] = field(default_factory=set)
    draining: bool = False
    retired: bool = False  # removed from the configuration; going away
    # Moved here from another group: not woken before that group has put it to sleep.
    arrival: asyncio.Future[None] | None = None

    def __post_init__(self) -> None:
        self.idle.set()


class ExclusiveGate(Protocol):
    """What an exclusive group's switch uses to clear the GPU of other groups' models."""

    lock: asyncio.Lock

    async def clear_others(self, switcher: Switcher) -> None: ...


class _ForcedSwitch(NamedTuple):
    target: str | None
    done: asyncio.Future[None]
    unless: Callable[[], bool] | None


@dataclass(frozen=True, slots=True)
class Transition:
    source: str | None
    target: str | None


class Switcher:
    """Keeps at most one model of a group awake and routes requests to it."""

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.group = group
        self.policy_config = policy_config
        self.policy = policy
        self.hooks = hooks
        self.costs = costs
        self.metrics = metrics
        self.base_dir = base_dir
        self.clock = clock
        self.models: dict[str, _ModelRuntime] = {m: _ModelRuntime(c) for m, c in models.items()}
        self.active: str | None = None
        self.activated_at = 0.0
        self.switching: Transition | None = None
        self.hook_running: tuple[str, str] | None = None  # (model, hook) while one runs
        self.backoff_until = 0.0
        self._kick = asyncio.Event()
        # Switches and sleeps asked for by name (admin API, idle sleep), ahead of the policy.
        self._forced: deque[_ForcedSwitch] = deque()
        self._forced_now: _ForcedSwitch | None = None  # the one being carried out
        # Requests released from a queue whose handlers have not resumed yet: counted in
        # flight, and the next sleep waits for them to start (even without a drain).
        self._starting = 0
        self._all_started = asyncio.Event()
        self._all_started.set()
        # Held while this group runs a wake or sleep hook: another group's exclusive
        # switch takes it too, to sleep our model (DESIGN §8).
        self.busy = asyncio.Lock()
        self.exclusive_gate: ExclusiveGate | None = None  # set for exclusive groups
        self.last_activity = clock()  # when a request last started or ended
        self.on_change: list[Callable[[], None]] = []  # called when the active model changes
        self.changes = 0  # how often the active model changed
        self._retry_handle: asyncio.TimerHandle | None = None
        self._driver: asyncio.Task[None] | None = None
        self._closed = False
        for model in self.models:
            metrics.active_model.labels(model=model).set(0)
            metrics.in_flight.labels(model=model).set(0)
            metrics.queue_depth.labels(model=model).set(0)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._driver is None:
            self._driver = asyncio.create_task(self._drive(), name=f"switcher-{self.group}")

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
        for runtime in self.models.values():
            self._fail_waiters(runtime, lambda: ServiceStopping("aiollmux is shutting down"))
        self._forced.clear()
        for item in pending:
            if not item.done.done():
                item.done.set_exception(ServiceStopping("aiollmux is shutting down"))

    def adopt(self, model: str) -> None:
        """Mark a model that is already awake as active without running its wake hook."""
        self._set_active(model)

    # -- reconfiguration (DESIGN §6) ---------------------------------------------------

    def configure(self, *, policy_config: PolicyConfig, policy: Policy, base_dir: Path) -> None:
        """A reload: the next decision uses the new policy, the next hook the new dir."""
        self.policy_config = policy_config
        self.policy = policy
        self.base_dir = base_dir
        self._kick.set()

    def put_model(self, config: ModelConfig, *, after: asyncio.Future[None] | None = None) -> None:
        """Add a model, or give an existing one its new settings (used from the next
        hook run and the next forwarded request on). `after`: it comes from another
        group, whose sleep of it must end before it is woken here."""
        runtime = self.models.get(config.id)
        if runtime is not None:
            # Back before its retirement finished: keep the runtime (and its guards).
            runtime.config = config
            runtime.retired = False
            return
        self.models[config.id] = _ModelRuntime(config, arrival=after)
        for gauge in (self.metrics.active_model, self.metrics.in_flight, self.metrics.queue_depth):
            gauge.labels(model=config.id).set(0)

    async def retire(self, model: str) -> None:
        """The model left the configuration: fail its queue with 404, drain and sleep it
        with its old hooks if it is awake (or about to be), then forget it."""
        runtime = self.models.get(model)
        if runtime is None or runtime.retired:
            return
        runtime.retired = True
        message = f"model {model!r} was removed from the configuration"
        self._fail_waiters(runtime, lambda: ModelNotFound(message))
        waking = self.switching is not None and self.switching.target == model
        if self.active == model or waking:
            await self.switch_to(None, unless=lambda: self.active != model or not runtime.retired)
        if self.models.get(model) is runtime and runtime.retired:
            del self.models[model]
            self.metrics.forget_model(model)

    # -- requests ----------------------------------------------------------------------

    def try_admit(self, model: str) -> InFlightGuard | None:
        """The fast path, without a coroutine: a guard if `model` is active and free."""
        runtime = self.models.get(model)
        if (
            runtime is None
            or self.active != model
            or runtime.draining
            or runtime.retired
            or runtime.waiters
            or self._closed
        ):
            return None
        return self._admit(runtime)

    async def acquire(self, model: str) -> InFlightGuard:
        """Wait until `model` is active and count one request in flight on it."""
        runtime = self.models.get(model)
        if runtime is None or runtime.retired:
            raise ModelNotFound(f"model {model!r} was removed from the configuration")
        if self._closed:
            raise ServiceStopping("aiollmux is shutting down")
        if self.active == model and not runtime.draining and not runtime.waiters:
            return self._admit(runtime)
        limit = self.policy_config.max_queued_requests
        if limit and len(runtime.waiters) >= limit:
            estimate = self.costs.estimate(self.active, model) or 1.0
            raise QueueFull(
                f"model {model!r} already has {len(runtime.waiters)} queued requests", estimate
            )
        waiter = _Waiter(asyncio.get_running_loop().create_future(), self.clock())
        runtime.waiters.append(waiter)
        self.metrics.queue_depth.labels(model=model).set(len(runtime.waiters))
        self._kick.set()
        guard: InFlightGuard | None = None
        try:
            async with asyncio.timeout(self.policy_config.request_timeout_secs):
                guard = await waiter.future
        except TimeoutError:
            waited = self.clock() - waiter.since
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
                _abandon(waiter)
            self._forget_waiter(runtime, waiter)
            if waiter.released:  # resumed (or gave up): no longer starting
                self._starting -= 1
                if self._starting == 0:
                    self._all_started.set()
        return guard

    def _forget_waiter(self, runtime: _ModelRuntime, waiter: _Waiter) -> None:
        try:
            runtime.waiters.remove(waiter)
        except ValueError:
            return  # already taken off the queue by a release or a failure
        self.metrics.queue_depth.labels(model=runtime.config.id).set(len(runtime.waiters))

    def _admit(self, runtime: _ModelRuntime) -> InFlightGuard:
        self.last_activity = self.clock()
        guard = InFlightGuard(self, runtime.config.id)
        runtime.in_flight += 1
        runtime.guards.add(guard)
        runtime.idle.clear()
        self.metrics.in_flight_of(runtime.config.id).set(runtime.in_flight)
        return guard

    def _release(self, guard: InFlightGuard) -> None:
        runtime = self.models.get(guard.model)
        if runtime is None or guard not in runtime.guards:
            return
        runtime.guards.discard(guard)
        runtime.in_flight -= 1
        if guard.model == self.active:  # not a late answer of a model switched away from
            self.last_activity = self.clock()
        self.metrics.in_flight_of(guard.model).set(runtime.in_flight)
        if runtime.in_flight == 0:
            runtime.idle.set()
            if self._anyone_waiting():
                self._kick.set()  # a policy may have been waiting for this model to idle

    async def switch_to(
        self, model: str | None, *, unless: Callable[[], bool] | None = None
    ) -> None:
        """Make `model` active (None: put the active model to sleep), bypassing the policy.

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

    def is_busy(self) -> bool:
        """Requests in flight or queued anywhere in the group, or a switch under way."""
        return self.switching is not None or any(
            r.in_flight or r.waiters for r in self.models.values()
        )

    def mark_lost(self, model: str) -> bool:
        """The active model died on its own: forget it without running its sleep hook."""
        runtime = self.models.get(model)
        if runtime is None or self.active != model or self.is_busy():
            return False
        self._set_inactive(model)
        self._kick.set()
        return True

    def _anyone_waiting(self) -> bool:
        return bool(self._forced) or any(r.waiters for r in self.models.values())

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
                logger.exception("switcher of group %r failed; continuing", self.group)
                # Requests may still wait (a policy that raised, say): ask again later.
                self._retry_at(self.clock() + BACKOFF_SECS)

    async def _step(self) -> None:
        while self._forced:
            item = self._forced_now = self._forced.popleft()
            target, done, unless = item
            try:
                if unless is not None and unless():
                    error: Exception | None = None
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
        active = self.models.get(self.active) if self.active is not None else None
        if active is not None and active.waiters and not active.draining:
            self._release_waiters(active)
        context = self._context()
        if context.target is None:
            return
        now = self.clock()
        if now < self.backoff_until:
            self._retry_at(self.backoff_until)
            return
        decision = self.policy.decide(context)
        target = decision.target
        if (
            decision.action == "switch"
            and target in self.models
            and target != self.active
            and not self.models[target].retired
        ):
            with contextlib.suppress(ModelNotFound):  # removed while the lock was awaited
                await self._switch(target)
            self._kick.set()  # others may be waiting: ask again
            return
        ask_again = next_ask(decision, now, self.policy.tick_interval)
        if ask_again is not None:
            # A deferral to now (or the past) would spin the loop: ask a little later.
            self._retry_at(max(ask_again, now + MIN_RETRY_SECS))

    def _retry_at(self, when: float) -> None:
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        delay = max(0.0, when - self.clock())
        self._retry_handle = asyncio.get_running_loop().call_later(delay, self._kick.set)

    def _context(self) -> PolicyContext:
        now = self.clock()
        queues: dict[str, QueueView] = {}
        target: str | None = None
        oldest = float("inf")
        for name, runtime in self.models.items():
            live = [w for w in runtime.waiters if not w.future.done()]
            first = live[0].since if live else now
            queues[name] = QueueView(
                model=name, queued=len(live), oldest_wait=now - first, in_flight=runtime.in_flight
            )
            if live and name != self.active and first < oldest and not runtime.retired:
                target, oldest = name, first
        active = queues.get(self.active) if self.active is not None else None
        return PolicyContext(
            now=now,
            target=target,
            active_model=self.active,
            active_for=now - self.activated_at if self.active is not None else 0.0,
            queues=queues,
            switch_cost=self.costs.estimate,
            active_idle_for=(
                now - self.last_activity if active is not None and active.in_flight == 0 else 0.0
            ),
        )

    async def _forced_switch(
        self, target: str | None, unless: Callable[[], bool] | None
    ) -> Exception | None:
        if target == self.active:
            return None
        if target is None:
            await self.yield_gpu(unless=unless)
            return None
        failure = await self._switch(target)
        return None if failure is None else WakeFailed(failure)

    async def yield_gpu(self, *, unless: Callable[[], bool] | None = None) -> None:
        """Drain and sleep the active model (an admin sleep, idle sleep, a removal, or
        another group's exclusive switch); not if `unless` has become true by the time
        the drain would begin (min_active_secs may have passed meanwhile)."""
        async with self.busy:
            source = self.active
            if source is None:
                return
            self.switching = Transition(source, None)
            try:
                await self._put_to_sleep(source, None, unless)
            finally:
                self.switching = None
                # Called from outside the driver too (another group's exclusive switch):
                # requests that queued meanwhile were not a target then; they are now.
                if self._anyone_waiting():
                    self._kick.set()

    # -- switching ---------------------------------------------------------------------

    async def _switch(self, target: str) -> str | None:
        """Drain and sleep the active model, wake `target`; the failure message, if any."""
        gate = self.exclusive_gate
        if gate is None:
            async with self.busy:
                return await self._switch_locked(target)
        # One exclusive switch at a time, and its lock before our own: two exclusive
        # groups can then never wait for each other's locks.
        async with gate.lock, self.busy:
            return await self._switch_locked(target)

    async def _switch_locked(self, target: str) -> str | None:
        runtime = self.models.get(target)
        if runtime is None or runtime.retired:  # a reload removed it while we waited
            raise ModelNotFound(f"model {target!r} was removed from the configuration")
        if runtime.arrival is not None:
            await asyncio.wait({runtime.arrival})  # its old group puts it to sleep first
            runtime.arrival = None
        source = self.active
        started = self.clock()
        self.switching = Transition(source, target)
        labels = {"from": source or IDLE, "to": target}
        logger.info(
            "switching %s -> %s",
            source or IDLE,
            target,
            extra={"event": "switch_started", **labels, "group": self.group},
        )
        try:
            if source is not None:
                await self._put_to_sleep(source, target)
            if self.exclusive_gate is not None:
                await self.exclusive_gate.clear_others(self)
            wake = await self._run_hook(target, "wake")
            if wake.ok:
                self._activated(target, source, started)
                return None
            return await self._wake_failed(target, source, wake)
        finally:
            self.switching = None

    async def _put_to_sleep(
        self, source: str, target: str | None, unless: Callable[[], bool] | None = None
    ) -> None:
        """Drain and sleep `source`, unless `unless` has become true before it began."""
        runtime = self.models[source]
        remaining = self.policy_config.min_active_secs - (self.clock() - self.activated_at)
        if remaining > 0:
            await asyncio.sleep(remaining)
        # Requests just let in must be on their way before the model is marked draining.
        await self._all_started.wait()
        if unless is not None and unless():
            return
        runtime.draining = True
        slept = False
        try:
            await self._drain(runtime, target)
            slept = True  # from here on the model counts as asleep, whatever happens
            sleep = await self._run_hook(source, "sleep")
            if not sleep.ok:
                logger.warning(
                    "sleep hook of %r failed; switching anyway: %s",
                    source,
                    sleep.describe(),
                    extra={"event": "sleep_hook_failed", "model": source},
                )
        finally:
            runtime.draining = False
            if slept:  # cancelled in the drain (shutdown): still awake, still active
                self._set_inactive(source)

    async def _drain(self, runtime: _ModelRuntime, target: str | None) -> None:
        if not self.policy_config.drain_before_switch or runtime.in_flight == 0:
            return
        started = self.clock()
        limit = self.policy_config.drain_timeout_secs
        try:
            async with asyncio.timeout(limit if limit > 0 else None):
                await runtime.idle.wait()
        except TimeoutError:
            logger.warning(
                "drain of %r timed out after %.1fs; cutting %d requests",
                runtime.config.id,
                limit,
                runtime.in_flight,
                extra={"event": "drain_timeout", "model": runtime.config.id},
            )
            for guard in list(runtime.guards):
                guard.cut()
            await runtime.idle.wait()
        self.metrics.switch_drain_duration.labels(
            **{"from": runtime.config.id, "to": target or IDLE}
        ).observe(self.clock() - started)

    async def _run_hook(self, model: str, hook: Literal["wake", "sleep", "alive"]) -> HookResult:
        self.hook_running = (model, hook)
        try:
            return await self.hooks.run(self.models[model].config, hook, self.base_dir)
        finally:
            self.hook_running = None

    def _activated(self, target: str, source: str | None, started: float) -> None:
        seconds = self.clock() - started
        labels = {"from": source or IDLE, "to": target}
        ema = self.costs.record(source, target, seconds)
        self.metrics.switch_total.labels(**labels, result="success").inc()
        self.metrics.switch_duration.labels(**labels).observe(seconds)
        self.metrics.switch_cost_ema.labels(**labels).set(ema)
        self._set_active(target)
        logger.info(
            "model %r active after %.2fs",
            target,
            seconds,
            extra={"event": "model_activated", **labels, "seconds": round(seconds, 3)},
        )
        self._release_waiters(self.models[target])

    async def _wake_failed(self, target: str, source: str | None, wake: HookResult) -> str:
        labels = {"from": source or IDLE, "to": target}
        self.metrics.switch_total.labels(**labels, result="failure").inc()
        logger.error(
            "switch to %r failed: %s",
            target,
            wake.describe(),
            extra={"event": "switch_failed", **labels},
        )
        cleanup = await self._run_hook(target, "sleep")
        if not cleanup.ok:
            logger.warning(
                "clean-up sleep hook of %r failed: %s",
                target,
                cleanup.describe(),
                extra={"event": "sleep_hook_failed", "model": target},
            )
        self.backoff_until = self.clock() + BACKOFF_SECS
        message = f"wake failed: {wake.describe()}"
        self._fail_waiters(self.models[target], lambda: WakeFailed(message))
        return message

    def _set_active(self, model: str) -> None:
        self.active = model
        self.activated_at = self.clock()
        self.last_activity = self.activated_at
        self.metrics.active_model.labels(model=model).set(1)
        self._changed()

    def _changed(self) -> None:
        self.changes += 1
        for callback in self.on_change:
            callback()

    def _set_inactive(self, model: str) -> None:
        if self.active == model:
            self.metrics.model_active_duration.labels(model=model).observe(
                self.clock() - self.activated_at
            )
            self.active = None
            self._changed()
        self.metrics.active_model.labels(model=model).set(0)

    def _release_waiters(self, runtime: _ModelRuntime) -> None:
        now = self.clock()
        while runtime.waiters:
            waiter = runtime.waiters.popleft()
            if waiter.future.done():
                continue
            # Counted in flight before the handler even resumes: the next switch's
            # drain waits for these requests, so they cannot be starved by a thrash.
            waiter.future.set_result(self._admit(runtime))
            waiter.released = True
            self._starting += 1
            self._all_started.clear()
            self.metrics.queue_wait.labels(model=runtime.config.id).observe(now - waiter.since)
        self.metrics.queue_depth.labels(model=runtime.config.id).set(0)

    def _fail_waiters(self, runtime: _ModelRuntime, error: Callable[[], Exception]) -> None:
        while runtime.waiters:
            waiter = runtime.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(error())
        self.metrics.queue_depth.labels(model=runtime.config.id).set(0)

    # -- reporting ---------------------------------------------------------------------

    def model_status(self, model: str) -> ModelStatus:
        runtime = self.models[model]
        if self.hook_running == (model, "wake"):
            return "waking"
        if self.hook_running == (model, "sleep"):
            return "sleeping"
        if runtime.draining:
            return "draining"
        return "active" if self.active == model else "asleep"

    def state(self) -> Literal["idle", "active", "switching"]:
        if self.switching is not None:
            return "switching"
        return "active" if self.active is not None else "idle"

    def in_flight(self, model: str) -> int:
        return self.models[model].in_flight

    def queued(self, model: str) -> int:
        return sum(1 for w in self.models[model].waiters if not w.future.done())


def _abandon(waiter: _Waiter) -> None:
    """The request gave up (cancelled, timed out): give back a guard it was handed."""
    future = waiter.future
    if not future.done():
        future.cancel()
    elif not future.cancelled() and future.exception() is None:
        future.result().release()
