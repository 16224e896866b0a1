"""The running daemon's model state: the current config and one switcher per GPU group.

Request handlers and admin routes talk to the `Multiplexer`; it resolves ids and
aliases, hands each model's requests to its group's switcher, and reports status.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from aiollmux.config import Config, ModelConfig
from aiollmux.errors import ModelNotFound
from aiollmux.health import HealthMonitor
from aiollmux.hooks import HookRunner
from aiollmux.metrics import Metrics
from aiollmux.policy import Policy, load_policy
from aiollmux.status import status_document
from aiollmux.switch_costs import SwitchCosts
from aiollmux.switcher import InFlightGuard, Switcher

logger = logging.getLogger(__name__)

_PROBE_CONCURRENCY = 4


class Multiplexer:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.hooks = HookRunner(self.metrics)
        self.hooks.withhold(_secrets(config))
        self.costs = SwitchCosts()
        self.generation = 1
        self.loaded_at = datetime.now(UTC)
        self.last_reload_error: str | None = None
        self.restart_required = False
        self.listening = (config.host, config.port)  # what a reload cannot change
        self.switchers: dict[str, Switcher] = {}
        self.monitors: dict[str, HealthMonitor] = {}
        self._started = False
        # False from `run`'s start until it listens: sleep_on_shutdown then does nothing
        # (a daemon that could not bind its port must not sleep another's model).
        self.served = True
        self.exclusive_gate = _ExclusiveGate(self)
        self._retiring: set[asyncio.Task[None]] = set()
        # Called after each `apply`: what reads the config elsewhere (the listener's
        # `max_connections`) and waits on it.
        self.on_applied: list[Callable[[], None]] = []
        for group in config.groups:
            self._add_group(group, config, load_policy(config.policy, config.source))

    def _add_group(
        self, group: str, config: Config, policy: Policy, skip: Collection[str] = ()
    ) -> None:
        """A switcher and a monitor for `group`; `skip`: models added later (moved in)."""
        members = {m.id: m for m in config.models.values() if m.group == group and m.id not in skip}
        switcher = Switcher(
            group=group,
            models=members,
            policy_config=config.policy,
            policy=policy,
            hooks=self.hooks,
            costs=self.costs,
            metrics=self.metrics,
            base_dir=config.base_dir,
            settings=config.groups[group],
        )
        monitor = HealthMonitor(
            switcher,
            alive_interval=config.alive_interval_secs,
            idle_sleep=config.policy.idle_sleep_secs,
        )
        self.switchers[group] = switcher
        self.monitors[group] = monitor
        self._set_gate(group, config)
        if self._started:
            switcher.start()
            monitor.start()

    def start(self) -> None:
        self._started = True
        for group, switcher in self.switchers.items():
            switcher.start()
            self.monitors[group].start()

    def apply(self, new: Config) -> None:
        """Swap in a validated configuration without dropping a request (docs/design.md §6).

        New requests see the new model list at once; a removed model that is awake is
        drained and put to sleep with its old hooks in the background.
        """
        old, self.config = self.config, new
        self.hooks.withhold(_secrets(new))
        policy_changed = new.policy != old.policy
        moved = {
            name
            for name, model in new.models.items()
            if name in old.models and old.models[name].group != model.group
        }
        for group in new.groups:
            policy = load_policy(new.policy, new.source)
            if group not in self.switchers:
                self._add_group(group, new, policy, skip=moved)
            elif (
                policy_changed
                or new.base_dir != old.base_dir
                or new.groups[group] != old.groups.get(group)
            ):
                self.switchers[group].configure(
                    policy_config=new.policy,
                    policy=policy,
                    base_dir=new.base_dir,
                    settings=new.groups[group],
                )
        for group in self.switchers:
            self._set_gate(group, new)
        for monitor in self.monitors.values():
            monitor.configure(
                alive_interval=new.alive_interval_secs, idle_sleep=new.policy.idle_sleep_secs
            )
        leaving: dict[str, asyncio.Task[None]] = {}
        for model in old.models.values():
            if model.id not in new.models or model.id in moved:
                leaving[model.id] = self._retire(self.switchers[model.group], model.id)
        for model in new.models.values():
            # A model that moved to another group is woken there only once its old group
            # has put it to sleep.
            self.switcher_for(model).put_model(model, after=leaving.get(model.id))
        self.restart_required = (new.host, new.port) != self.listening
        self.generation += 1
        self.loaded_at = datetime.now(UTC)
        self.last_reload_error = None
        for callback in self.on_applied:
            callback()

    def _set_gate(self, group: str, config: Config) -> None:
        settings = config.groups.get(group)
        exclusive = settings is not None and settings.exclusive
        self.switchers[group].set_exclusive_gate(self.exclusive_gate if exclusive else None)

    def _retire(self, switcher: Switcher, model: str) -> asyncio.Task[None]:
        task = asyncio.create_task(switcher.retire(model), name=f"retire-{model}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    async def adopt_awake_models(self) -> None:
        """Find models already awake (a restart of aiollmux, not of the box) (docs/design.md §7).

        Exactly one alive in a group: it becomes active without running its wake hook.
        Several: all are put to sleep, because which one owns the GPU is unknown; in a
        group with a memory budget they are all adopted if together they fit (docs/design.md §8).
        """
        probes = asyncio.Semaphore(_PROBE_CONCURRENCY)

        async def alive(model: ModelConfig) -> bool:
            async with probes:
                return (await self.hooks.run(model, "alive", self.config.base_dir)).ok

        models = sorted(self.config.models.values(), key=lambda m: m.id)
        answers = await asyncio.gather(*(alive(m) for m in models))
        if not any(answers):
            logger.info("no model is awake at start", extra={"event": "startup_idle"})
        for group, switcher in self.switchers.items():
            awake = [m for m, ok in zip(models, answers, strict=True) if ok and m.group == group]
            if len(awake) == 1 or (awake and _fits(awake, switcher.memory_gb)):
                for model in awake:
                    switcher.adopt(model.id)
                    logger.info(
                        "model %r is already awake; adopted as active without waking it",
                        model.id,
                        extra={"event": "model_adopted", "model": model.id, "group": group},
                    )
            elif awake:
                names = ", ".join(m.id for m in awake)
                logger.warning(
                    "several models of group %r are awake (%s); putting them all to sleep",
                    group,
                    names,
                    extra={"event": "startup_conflict", "group": group},
                )
                for model in awake:
                    result = await self.hooks.run(model, "sleep", self.config.base_dir)
                    if not result.ok:
                        logger.warning(
                            "%s",
                            result.describe(),
                            extra={"event": "sleep_hook_failed", "model": model.id},
                        )

    async def stop_switching(self) -> None:
        """Shutdown, first step: no more switches; queued requests get 503 at once."""
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await asyncio.gather(*(m.close() for m in self.monitors.values()))
        await asyncio.gather(*(s.close() for s in self.switchers.values()))

    async def close(self, *, sleep_active: bool = False) -> None:
        """Shutdown, last step (in-flight requests are done): optionally sleep the
        active models, then make sure no hook process is left."""
        await self.stop_switching()
        if sleep_active:
            for switcher in self.switchers.values():
                for name in switcher.awake:
                    model = switcher.model_config(name)
                    await self.hooks.run(model, "sleep", self.config.base_dir)
        await self.hooks.close()

    def backend_failed(self, model: ModelConfig) -> None:
        """A request to `model` got no answer: if it is awake, check it is alive now."""
        if model.id in self.switcher_for(model).awake:
            self.monitors[model.group].check_soon(model.id)

    def resolve(self, name: str) -> ModelConfig:
        model = self.config.resolve(name)
        if model is None:
            raise ModelNotFound(f"model {name!r} does not exist")
        return model

    def switcher_for(self, model: ModelConfig) -> Switcher:
        return self.switchers[model.group]

    async def acquire(self, model: ModelConfig) -> InFlightGuard:
        switcher = self.switchers[model.group]
        return switcher.try_admit(model.id) or await switcher.acquire(model.id)

    def status(self) -> dict[str, Any]:
        """The whole `/admin/status` document (aiollmux.status builds it)."""
        return status_document(self)


def _fits(models: list[ModelConfig], budget: float | None) -> bool:
    if budget is None:
        return False
    return sum(m.memory_gb or 0.0 for m in models) <= budget


class _ExclusiveGate:
    """Serialises exclusive switches and sleeps the other groups' models for them."""

    def __init__(self, mux: Multiplexer) -> None:
        self.mux = mux
        self.lock = asyncio.Lock()

    async def clear_others(self, switcher: Switcher) -> None:
        for group, other in list(self.mux.switchers.items()):  # a reload may add groups
            settings = self.mux.config.groups.get(group)
            if other is switcher or (settings is not None and settings.persistent):
                continue
            await other.yield_gpu()


def _secrets(config: Config) -> tuple[str, ...]:
    """What hooks must never see in their environment (docs/design.md §5)."""
    token = config.admin_token or os.environ.get("LLMUX_ADMIN_TOKEN")
    return (*config.api_keys, *([token] if token else []))
