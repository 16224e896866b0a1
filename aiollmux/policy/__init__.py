"""Switch policies: the built-ins by name, or a user's class by `package.module:Class`."""

from __future__ import annotations

import importlib

from aiollmux.config import PolicyConfig
from aiollmux.errors import ConfigError
from aiollmux.policy.base import (
    Decision,
    Policy,
    PolicyContext,
    PolicyFactory,
    QueueView,
    VictimView,
    least_recently_used,
    next_ask,
    victim_order,
)
from aiollmux.policy.cost_aware import CostAwarePolicy
from aiollmux.policy.fifo import FifoPolicy

BUILTINS: dict[str, PolicyFactory] = {"fifo": FifoPolicy, "cost-aware": CostAwarePolicy}

__all__ = [
    "BUILTINS",
    "Decision",
    "Policy",
    "PolicyContext",
    "QueueView",
    "VictimView",
    "least_recently_used",
    "load_policy",
    "next_ask",
    "victim_order",
]


def load_policy(config: PolicyConfig, source: str = "<config>") -> Policy:
    """Build the configured policy; a user class that cannot be loaded is a `ConfigError`."""
    factory = BUILTINS.get(config.name)
    if factory is None:
        factory = _import_factory(config.name, source)
    try:
        policy = factory(config)
    except Exception as exc:
        raise ConfigError(source, "policy.name", f"{config.name} failed to start: {exc}") from None
    if not isinstance(policy, Policy):
        raise ConfigError(
            source, "policy.name", f"{config.name} has no decide() method and tick_interval"
        )
    return policy


def _import_factory(name: str, source: str) -> PolicyFactory:
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(source, "policy.name", f"cannot import {module_name}: {exc}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError(source, "policy.name", f"{module_name} has no class {attribute}")
    return factory  # type: ignore[no-any-return]  # checked to be callable; checked again after
