"""A GPU group's state as one value, and the read-only views derived from it.

`SwitcherState` holds what a group is: its members (`aiollmux.admission`), the awake ones
in activation order, the switch and the hook under way. Idle/active/switching, each
model's status and the memory it occupies derive from that; `snapshot()` freezes it for
the status document. `aiollmux.switcher.Switcher` (the driver) is the only writer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from aiollmux.admission import Member
from aiollmux.config import GroupConfig, ModelConfig, PolicyConfig
from aiollmux.hooks import HookRunner

ModelStatus = Literal["active", "asleep", "waking", "sleeping", "draining"]
GroupState = Literal["idle", "active", "switching"]


@dataclass(frozen=True, slots=True)
class Transition:
    source: str | None
    target: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberView:
    """One member as the status document shows it."""

    config: ModelConfig
    state: ModelStatus
    in_flight: int
    queued: int
    retired: bool
    last_activity: float  # when a request last started or ended on it (or it woke)


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupView:
    """A group at one instant (`Switcher.snapshot()`)."""

    group: str
    state: GroupState
    active_model: str | None
    active_models: tuple[str, ...]  # awake members, most recently activated last
    switching: Transition | None
    members: Mapping[str, MemberView]
    memory_gb: float | None  # the budget; None: one member awake at a time
    memory_used_gb: float | None  # awake members' and the waking one's; None: not declared


class SwitcherState:
    """The state of one group and its read-only views (written only by the Switcher)."""

    def __init__(
        self,
        *,
        group: str,
        settings: GroupConfig | None,
        policy_config: PolicyConfig,
        hooks: HookRunner,
        base_dir: Path,
        clock: Callable[[], float],
    ) -> None:
        self._group = group
        self._settings = settings if settings is not None else GroupConfig(name=group)
        self._policy_config = policy_config
        self._hooks = hooks
        self._base_dir = base_dir
        self._clock = clock
        self._members: dict[str, Member] = {}
        # The state, as one value: the awake members in activation order (model ->
        # when it became active), the switch under way, the hook running. Whether the
        # group is idle, active or switching, and each model's status, derive from it.
        self._awake: dict[str, float] = {}
        self._switching: Transition | None = None
        self._hook_running: tuple[str, str] | None = None  # (model, hook) while one runs
        # Woken now: its memory counts from its wake's start (and free-memory probe) to the
        # end of the wake, or of the clean-up sleep after a failed wake.
        self._occupying: str | None = None
        self._backoff_until = 0.0
        self._idle_since = clock()
        self._changes = 0

    @property
    def group(self) -> str:
        return self._group

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @property
    def hooks(self) -> HookRunner:
        return self._hooks

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def policy_config(self) -> PolicyConfig:
        return self._policy_config

    @property
    def active(self) -> str | None:
        """The most recently activated awake member, if any."""
        return next(reversed(self._awake), None)

    @property
    def awake(self) -> tuple[str, ...]:
        """The awake members, most recently activated last."""
        return tuple(self._awake)

    @property
    def activated_at(self) -> float:
        active = self.active
        return 0.0 if active is None else self._awake[active]

    @property
    def switching(self) -> Transition | None:
        return self._switching

    @property
    def hook_running(self) -> tuple[str, str] | None:
        return self._hook_running

    @property
    def backoff_until(self) -> float:
        return self._backoff_until

    @property
    def last_activity(self) -> float:
        """When a request last started or ended on the active model (or it woke)."""
        active = self.active
        return self._idle_since if active is None else self._members[active].last_activity

    @property
    def settings(self) -> GroupConfig:
        return self._settings

    @property
    def memory_gb(self) -> float | None:
        """The group's memory budget; None: one member awake at a time."""
        return self._settings.memory_gb

    def memory_used_gb(self) -> float | None:
        """What the awake members (and the one being woken) occupy; None if one of them
        declares no `memory_gb`."""
        used = 0.0
        for name in self._occupants():
            size = self._members[name].config.memory_gb
            if size is None:
                return None
            used += size
        return used

    def _occupants(self) -> list[str]:
        names = [name for name in self._awake if name in self._members]
        if self._occupying is not None and self._occupying not in self._awake:
            names.append(self._occupying)
        return names

    def member_last_activity(self, model: str) -> float:
        return self._members[model].last_activity

    @property
    def changes(self) -> int:
        """How often the awake set changed."""
        return self._changes

    @property
    def models(self) -> Mapping[str, ModelConfig]:
        """Every member's settings, retiring ones included."""
        return MappingProxyType({name: m.config for name, m in self._members.items()})

    def model_config(self, model: str) -> ModelConfig:
        return self._members[model].config

    def model_status(self, model: str) -> ModelStatus:
        member = self._members[model]
        if self._hook_running == (model, "wake"):
            return "waking"
        if self._hook_running == (model, "sleep"):
            return "sleeping"
        if member.draining:
            return "draining"
        return "active" if model in self._awake else "asleep"

    def state(self) -> GroupState:
        if self._switching is not None:
            return "switching"
        return "active" if self._awake else "idle"

    def in_flight(self, model: str) -> int:
        return self._members[model].in_flight

    def queued(self, model: str) -> int:
        return self._members[model].queued

    def is_busy(self, model: str | None = None) -> bool:
        """Requests in flight or queued anywhere in the group, or a switch under way.

        With `model`, in a group with a memory budget: that member has requests, or is
        being put to sleep or woken (the others' traffic does not concern it)."""
        if model is None or self.memory_gb is None:
            return self._switching is not None or any(
                m.in_flight or m.waiters for m in self._members.values()
            )
        member = self._members.get(model)
        moving = self._switching is not None and model in (
            self._switching.source,
            self._switching.target,
        )
        return member is None or bool(member.in_flight or member.waiters) or moving

    def snapshot(self) -> GroupView:
        members = {
            name: MemberView(
                config=member.config,
                state=self.model_status(name),
                in_flight=member.in_flight,
                queued=member.queued,
                retired=member.retired,
                last_activity=member.last_activity,
            )
            for name, member in self._members.items()
        }
        return GroupView(
            group=self._group,
            state=self.state(),
            active_model=self.active,
            active_models=self.awake,
            switching=self._switching,
            members=MappingProxyType(members),
            memory_gb=self.memory_gb,
            memory_used_gb=self.memory_used_gb(),
        )

    def _over_budget(self) -> bool:
        """More is awake than the group holds: its budget, or one member without one."""
        budget = self.memory_gb
        if budget is None:
            return len(self._awake) > 1
        used = self.memory_used_gb()
        return used is not None and used > budget

    def _memory_of(self, model: str | None) -> float:
        if model is None:
            return 0.0
        member = self._members.get(model)
        size = member.config.memory_gb if member is not None else None
        return size if size is not None else 0.0
