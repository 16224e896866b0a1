from __future__ import annotations

import pytest

from aiollmux.switch_costs import SwitchCosts


def test_first_sample_seeds_then_ema() -> None:
    costs = SwitchCosts()
    assert costs.estimate(None, "a") is None
    assert costs.record(None, "a", 10.0) == 10.0
    assert costs.record(None, "a", 20.0) == pytest.approx(0.3 * 20 + 0.7 * 10)
    assert costs.items()[0][:2] == ("idle", "a")
    assert costs.items()[0][2].samples == 2


def test_cold_starts_are_kept_apart_and_fallback_is_the_mean() -> None:
    costs = SwitchCosts()
    costs.record(None, "a", 2.0)
    costs.record("b", "a", 6.0)
    assert costs.estimate(None, "a") == 2.0
    assert costs.estimate("b", "a") == 6.0
    assert costs.estimate("c", "a") == 4.0  # unknown pair: mean of what is known for "a"
    costs.forget("a")
    assert costs.items() == []
