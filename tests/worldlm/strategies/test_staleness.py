"""Staleness policy: (1+s)^−a discount and a hard bound with reasons, never raising."""

from __future__ import annotations

import pytest
import torch

from tests.worldlm.strategies.helpers import assert_same, model
from worldlm.strategies import FedAvg, ServerOptimizer, StalenessPolicy, Update, staleness_weight


@pytest.mark.parametrize(("s", "a"), [(0, 0.5), (1, 0.5), (3, 0.5), (4, 1.0), (9, 2.0)])
def test_weight_follows_one_plus_s_to_minus_a(s: int, a: float) -> None:
    assert staleness_weight(s, a) == pytest.approx((1 + s) ** -a)


def test_discount_is_applied_to_fedavg_weights() -> None:
    current = {"w": torch.zeros(1)}
    updates = [
        Update("fresh", {"w": torch.tensor([1.0])}, num_samples=1, staleness=0),
        Update("stale", {"w": torch.tensor([4.0])}, num_samples=1, staleness=3),
    ]
    result = StalenessPolicy(FedAvg(), exponent=0.5).aggregate(current, updates)
    w_stale = 4**-0.5
    expected = (1.0 + 4.0 * w_stale) / (1 + w_stale)
    assert result.weights["w"].item() == pytest.approx(expected)


def test_updates_past_bound_are_rejected_with_reason() -> None:
    current = {"w": torch.zeros(1)}
    updates = [
        Update("ok", {"w": torch.tensor([1.0])}, num_samples=1, staleness=2),
        Update("late", {"w": torch.tensor([100.0])}, num_samples=1, staleness=3),
    ]
    result = StalenessPolicy(FedAvg(), exponent=0.0, bound=2).aggregate(current, updates)
    assert [r.sender for r in result.rejected] == ["late"]
    assert result.rejected[0].reason == "stale"
    assert "staleness 3 > bound 2" in result.rejected[0].detail
    assert result.accepted == ("ok",)
    assert result.weights["w"].item() == pytest.approx(1.0)
    assert result.info["staleness/rejected"] == 1.0


def test_all_rejected_returns_current_unaggregated_without_raising() -> None:
    current = model()
    late = Update("late", {"norm.weight": torch.ones(4)}, num_samples=1, staleness=9)
    result = StalenessPolicy(FedAvg(), bound=1).aggregate(current, [late])
    assert result.aggregated is False
    assert_same(result.weights, current)
    assert len(result.rejected) == 1


def test_state_passes_through_to_inner_strategy() -> None:
    policy = StalenessPolicy(ServerOptimizer(momentum=0.9))
    current = {"w": torch.zeros(1)}
    policy.aggregate(current, [Update("a", {"w": torch.ones(1)}, num_samples=1)])
    state = policy.state_dict()
    assert "momentum_buffers" in state["inner"]
    fresh = StalenessPolicy(ServerOptimizer(momentum=0.9))
    fresh.load_state_dict(state)
    assert fresh.state_dict()["inner"]["steps"] == 1
