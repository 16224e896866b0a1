"""Who may use a model now: each member's queue of waiting requests and its in-flight guards.

The switcher (the driver) decides *when* a member is awake; this module keeps the books of
the requests around it: queued `Waiter`s, `InFlightGuard`s counted in flight, the event
"in flight reached zero" a drain waits for, and the requests let out of a queue whose
handlers have not resumed yet (docs/design.md, "admission").
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiollmux.config import ModelConfig
from aiollmux.metrics import Metrics

# The time constant of a member's recent demand (requests taken, exponentially decayed).
DEMAND_SECS = 300.0


class InFlightGuard:
    """One request counted in flight on a model; `release()` is idempotent."""

    __slots__ = ("_member", "model", "on_cut", "released", "was_cut")

    def __init__(self, member: Member) -> None:
        self._member = member
        self.model = member.config.id
        self.released = False
        self.was_cut = False
        # Set by the proxy: ends the client's connection and the upstream request.
        self.on_cut: Callable[[], None] | None = None

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._member.release(self)

    def cut(self) -> None:
        """End the request now (drain timeout); its handler unwinds and releases us."""
        self.was_cut = True
        if self.on_cut is not None:
            self.on_cut()
        else:
            self.release()


@dataclass(slots=True, eq=False)
class Waiter:
    future: asyncio.Future[InFlightGuard]
    since: float
    released: bool = False  # handed a guard by `Member.release_waiters`


@dataclass(slots=True, eq=False)
class Member:
    """One model of a group: its queue, its guards, and whether it may take requests."""

    config: ModelConfig
    metrics: Metrics
    clock: Callable[[], float]
    # Called after a guard is given back (the switcher notes activity, kicks its driver).
    on_release: Callable[[Member, InFlightGuard], None]
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: deque[Waiter] = field(default_factory=deque)
    guards: set[InFlightGuard] = field(default_factory=set)
    draining: bool = False
    retired: bool = False  # removed from the configuration; going away
    # Moved here from another group: not woken before that group has put it to sleep.
    arrival: asyncio.Future[None] | None = None
    last_activity: float = 0.0  # when a request last started or ended on it
    forgotten: bool = False  # deleted from its group: late releases change nothing
    _demand: float = 0.0
    _demand_at: float = 0.0

    def __post_init__(self) -> None:
        self.idle.set()
        self.last_activity = self.clock()

    @property
    def model(self) -> str:
        return self.config.id

    @property
    def queued(self) -> int:
        return sum(1 for w in self.waiters if not w.future.done())

    def enqueue(self) -> Waiter:
        waiter = Waiter(asyncio.get_running_loop().create_future(), self.clock())
        self.waiters.append(waiter)
        self.metrics.queue_depth.labels(model=self.model).set(len(self.waiters))
        return waiter

    def forget(self, waiter: Waiter) -> None:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return  # already taken off the queue by a release or a failure
        self.metrics.queue_depth.labels(model=self.model).set(len(self.waiters))

    def demand(self, now: float) -> float:
        """Requests taken recently: each counts 1, fading with a `DEMAND_SECS` constant."""
        return self._demand * math.exp((self._demand_at - now) / DEMAND_SECS)

    def admit(self) -> InFlightGuard:
        now = self.last_activity = self.clock()
        self._demand = self.demand(now) + 1.0
        self._demand_at = now
        guard = InFlightGuard(self)
        self.in_flight += 1
        self.guards.add(guard)
        self.idle.clear()
        self.metrics.in_flight_of(self.model).set(self.in_flight)
        return guard

    def release(self, guard: InFlightGuard) -> None:
        if self.forgotten or guard not in self.guards:
            return
        self.guards.discard(guard)
        self.in_flight -= 1
        self.last_activity = self.clock()
        self.metrics.in_flight_of(self.model).set(self.in_flight)
        if self.in_flight == 0:
            self.idle.set()
        self.on_release(self, guard)

    def release_waiters(self, starting: StartingRequests) -> None:
        """Hand every queued request a guard: counted in flight before its handler even
        resumes, so the next drain waits for it and a thrash cannot starve it."""
        now = self.clock()
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.future.done():
                continue
            waiter.future.set_result(self.admit())
            waiter.released = True
            starting.add()
            self.metrics.queue_wait.labels(model=self.model).observe(now - waiter.since)
        self.metrics.queue_depth.labels(model=self.model).set(0)

    def fail_waiters(self, error: Callable[[], Exception]) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(error())
        self.metrics.queue_depth.labels(model=self.model).set(0)

    def cut_all(self) -> None:
        for guard in list(self.guards):
            guard.cut()


class StartingRequests:
    """Requests let out of a queue whose handlers have not resumed yet: the next sleep
    waits for them to be on their way (even without a drain)."""

    def __init__(self) -> None:
        self._count = 0
        self._all_started = asyncio.Event()
        self._all_started.set()

    def add(self) -> None:
        self._count += 1
        self._all_started.clear()

    def done(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._all_started.set()

    async def wait(self) -> None:
        await self._all_started.wait()


def abandon(waiter: Waiter) -> None:
    """The request gave up (cancelled, timed out): give back a guard it was handed."""
    future = waiter.future
    if not future.done():
        future.cancel()
    elif not future.cancelled() and future.exception() is None:
        future.result().release()
