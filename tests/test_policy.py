from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiollmux.config import PolicyConfig
from aiollmux.errors import ConfigError
from aiollmux.policy import (
    Decision,
    PolicyContext,
    QueueView,
    VictimView,
    least_recently_used,
    load_policy,
    victim_order,
)
from aiollmux.policy.fifo import FifoPolicy


def _context(target: str | None, active: str | None = "a") -> PolicyContext:
    queues = {m: QueueView(model=m, queued=1, oldest_wait=0.0, in_flight=0) for m in "ab"}
    return PolicyContext(
        now=0.0, target=target, active_model=active, active_for=1.0, queues=queues,
        switch_cost=lambda source, target: None,
    )  # fmt: skip


def test_fifo_switches_on_the_first_request_for_another_model() -> None:
    policy = load_policy(PolicyConfig())
    assert isinstance(policy, FifoPolicy)
    assert policy.decide(_context("b")) == Decision.switch("b")
    assert policy.decide(_context(None)) == Decision.skip()
    assert _context("b").active_in_flight == 0
    assert _context("b", active=None).active_in_flight == 0


@pytest.fixture
def policy_module(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "my_policies.py").write_text(
        textwrap.dedent(
            """
            from aiollmux.policy import Decision

            class Always:
                tick_interval = None
                def __init__(self, config):
                    self.config = config
                def decide(self, context):
                    return Decision.skip()

            class Broken:
                def __init__(self, config):
                    raise RuntimeError("bad knob")

            class NoDecide:
                def __init__(self, config):
                    pass
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("my_policies", None)


def test_user_policy_loads_by_import_path(policy_module: Path) -> None:
    policy = load_policy(PolicyConfig(name="my_policies:Always"))
    assert policy.decide(_context("b")) == Decision.skip()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module_xyz:Thing", "cannot import no_such_module_xyz"),
        ("my_policies:Missing", "has no class Missing"),
        ("my_policies:Broken", "failed to start: bad knob"),
        ("my_policies:NoDecide", "no decide()"),
    ],
)
def test_user_policy_errors_name_the_key(policy_module: Path, name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"policy\.name") as caught:
        load_policy(PolicyConfig(name=name), "cfg.toml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("cfg.toml: policy.name:")


def test_config_knows_every_builtin_policy() -> None:
    # config may not import the policy package (STYLE), so it keeps its own list.
    from aiollmux.config import BUILTIN_POLICIES
    from aiollmux.policy import BUILTINS

    assert set(BUILTIN_POLICIES) == set(BUILTINS)


def _victim(
    model: str, *, idle_for: float, demand: float = 0.0, cost: float | None = None
) -> VictimView:
    return VictimView(
        model=model, memory_gb=4.0, idle_for=idle_for, in_flight=0, queued=0, demand=demand,
        bring_back_cost=cost,
    )  # fmt: skip


def test_fifo_orders_victims_least_recently_used_first() -> None:
    candidates = [_victim("a", idle_for=1), _victim("b", idle_for=30), _victim("c", idle_for=5)]
    policy = load_policy(PolicyConfig())
    assert victim_order(policy, candidates, _context("d")) == ["b", "c", "a"]


def test_cost_aware_orders_victims_by_demand_times_the_cost_of_bringing_them_back() -> None:
    candidates = [
        _victim("busy-cheap", idle_for=1, demand=10, cost=1.0),  # 10
        _victim("quiet-dear", idle_for=1, demand=1, cost=60.0),  # 60
        _victim("rare", idle_for=2, demand=0.5, cost=2.0),  # 1
        _victim("unmeasured", idle_for=9, demand=0.5, cost=None),  # 0.5 x 10 s = 5
    ]
    policy = load_policy(PolicyConfig(name="cost-aware"))
    order = victim_order(policy, candidates, _context("d"))
    assert order == ["rare", "unmeasured", "busy-cheap", "quiet-dear"]


class NoVictimOrder:
    tick_interval: float | None = None

    def decide(self, context: PolicyContext) -> Decision:
        return Decision.skip()


class PartialVictimOrder(NoVictimOrder):
    def order_victims(self, candidates: object, context: PolicyContext) -> list[str]:
        return ["c", "ghost", "c"]


def test_a_policy_without_victim_order_gets_least_recently_used() -> None:
    candidates = [_victim("a", idle_for=1), _victim("b", idle_for=30), _victim("c", idle_for=5)]
    assert victim_order(NoVictimOrder(), candidates, _context("d")) == ["b", "c", "a"]
    assert least_recently_used(candidates) == ["b", "c", "a"]
    # Its own answer is kept, fixed up: unknown and repeated ids dropped, the rest LRU.
    assert victim_order(PartialVictimOrder(), candidates, _context("d")) == ["c", "b", "a"]
