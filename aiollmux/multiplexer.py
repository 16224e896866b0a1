"""The running daemon's model state: the current config and one switcher per GPU group.

Request handlers and admin routes talk to the `Multiplexer`; it resolves ids and
aliases, hands each model's requests to its group's switcher, and reports status.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aiollmux.config import Config, ModelConfig
from aiollmux.cost import SwitchCosts
from aiollmux.errors import ModelNotFound
from aiollmux.hooks import HookRunner
from aiollmux.metrics import Metrics
from aiollmux.policy import load_policy
from aiollmux.switcher import InFlightGuard, Switcher


class Multiplexer:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.hooks = HookRunner(self.metrics)
        self.costs = SwitchCosts()
        self.generation = 1
        self.loaded_at = datetime.now(UTC)
        self.last_reload_error: str | None = None
        self.restart_required = False
        self.switchers: dict[str, Switcher] = {}
        for group in config.groups:
            members = {m.id: m for m in config.models.values() if m.group == group}
            self.switchers[group] = Switcher(
                group=group,
                models=members,
                policy_config=config.policy,
                policy=load_policy(config.policy, config.source),
                hooks=self.hooks,
                costs=self.costs,
                metrics=self.metrics,
                base_dir=config.base_dir,
            )

    def start(self) -> None:
        for switcher in self.switchers.values():
            switcher.start()

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.switchers.values()))
        await self.hooks.close()

    def resolve(self, name: str) -> ModelConfig:
        model = self.config.resolve(name)
        if model is None:
            raise ModelNotFound(f"model {name!r} does not exist")
        return model

    def switcher_for(self, model: ModelConfig) -> Switcher:
        return self.switchers[model.group]

    async def acquire(self, model: ModelConfig) -> InFlightGuard:
        return await self.switcher_for(model).acquire(model.id)

    def status(self) -> dict[str, Any]:
        groups = {
            name: {
                "state": s.state(),
                "active_model": s.active,
                "switching": None
                if s.switching is None
                else {"from": s.switching.source, "to": s.switching.target},
            }
            for name, s in self.switchers.items()
        }
        models = {}
        for model in sorted(self.config.models.values(), key=lambda m: m.id):
            switcher = self.switcher_for(model)
            models[model.id] = {
                "port": model.port,
                "group": model.group,
                "aliases": list(model.aliases),
                "in_flight": switcher.in_flight(model.id),
                "queued": switcher.queued(model.id),
                "state": switcher.model_status(model.id),
            }
        default = groups["default"]
        return {
            "state": default["state"],
            "active_model": default["active_model"],
            "switching": default["switching"],
            "groups": groups,
            "models": models,
            "switch_costs": [
                {"from": a, "to": b, "seconds": round(e.seconds, 3), "samples": e.samples}
                for a, b, e in self.costs.items()
            ],
            "config": {
                "path": self.config.source,
                "generation": self.generation,
                "loaded_at": self.loaded_at.isoformat(timespec="seconds"),
                "last_reload_error": self.last_reload_error,
                "restart_required": self.restart_required,
            },
        }
