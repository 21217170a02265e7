"""Attention aggregation (FedAtt): the rule, its limits, and its sign."""

from __future__ import annotations

import math

import pytest
import torch

from tests.worldlm.strategies.helpers import assert_same, model, snapshot, update
from worldlm.strategies import AttentionAggregation, Candidate, StrategyConfigError, Update


def test_identical_candidates_move_to_that_candidate() -> None:
    current = {"w": torch.tensor([1.0, 2.0]), "v": torch.tensor([[0.5]])}
    common = {"w": torch.tensor([3.0, -1.0]), "v": torch.tensor([[2.0]])}
    candidates = [Candidate(common, source=s) for s in "abc"]
    result = AttentionAggregation().aggregate_candidates(current, candidates)
    for name in current:
        assert torch.allclose(result.weights[name], common[name])
    assert result.info["attention/alpha/a"] == pytest.approx(1 / 3)


def test_zero_deltas_leave_weights_identical() -> None:
    current = model()
    zeros = {n: torch.zeros_like(t) for n, t in current.items() if t.is_floating_point()}
    updates = [Update(s, zeros, num_samples=1) for s in "ab"]
    assert_same(AttentionAggregation().aggregate(current, updates).weights, current)


def test_eps_zero_leaves_aggregator_unchanged() -> None:
    current = model()
    updates = [update("a", current, seed=1), update("b", current, seed=2)]
    assert_same(AttentionAggregation(eps=0.0).aggregate(current, updates).weights, current)


def _near_far(sign: int) -> dict[str, float]:
    current = {"w": torch.zeros(2)}
    updates = [
        Update("near", {"w": torch.tensor([0.1, 0.0])}, num_samples=1),
        Update("far", {"w": torch.tensor([0.0, 1.0])}, num_samples=1),
    ]
    return AttentionAggregation(sign=sign).aggregate(current, updates).info


def test_sign_plus_gives_farther_candidate_larger_weight() -> None:
    info = _near_far(sign=1)
    assert info["attention/alpha/far"] > info["attention/alpha/near"]


def test_sign_minus_gives_nearer_candidate_larger_weight() -> None:
    info = _near_far(sign=-1)
    assert info["attention/alpha/near"] > info["attention/alpha/far"]


def test_rule_matches_the_formula_by_hand() -> None:
    current = {"w": torch.tensor([0.0, 0.0])}
    d1, d2 = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0])  # distances 5 and 1
    updates = [Update("a", {"w": d1}, num_samples=1), Update("b", {"w": d2}, num_samples=9)]
    result = AttentionAggregation(eps=0.5, tau=2.0).aggregate(current, updates)
    za, zb = math.exp(5 / 2), math.exp(1 / 2)
    alpha_a, alpha_b = za / (za + zb), zb / (za + zb)
    expected = 0.5 * (alpha_a * d1 + alpha_b * d2)  # w − ε Σ α_k (w − w_k), w = 0
    assert torch.allclose(result.weights["w"], expected)
    assert result.info["attention/alpha/a"] == pytest.approx(alpha_a)


def test_update_weight_lowers_attention_share_through_log_bias() -> None:
    current = {"w": torch.zeros(1)}
    delta = {"w": torch.ones(1)}
    updates = [Update("fresh", delta, 1), Update("stale", delta, 1, weight=1 / 3)]
    info = AttentionAggregation().aggregate(current, updates).info
    assert info["attention/alpha/fresh"] == pytest.approx(0.75)
    assert info["attention/alpha/stale"] == pytest.approx(0.25)


def test_per_tensor_info_reports_alpha_per_tensor_and_candidate() -> None:
    current = model()
    updates = [update("a", current, seed=1), update("b", current, seed=2)]
    info = AttentionAggregation(per_tensor_info=True).aggregate(current, updates).info
    total = info["attention/alpha/norm.weight/a"] + info["attention/alpha/norm.weight/b"]
    assert total == pytest.approx(1.0)
    assert info["attention/tensors"] == 4.0


def test_attention_does_not_mutate_inputs() -> None:
    current = model()
    updates = [update("a", current, seed=1), update("b", current, seed=2)]
    before, deltas = snapshot(current), [snapshot(dict(u.delta)) for u in updates]
    AttentionAggregation().aggregate(current, updates)
    assert_same(current, before)
    for u, d in zip(updates, deltas, strict=True):
        assert_same(dict(u.delta), d)


@pytest.mark.parametrize("kwargs", [{"eps": -1.0}, {"tau": 0.0}, {"sign": 0}])
def test_invalid_parameters_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(StrategyConfigError):
        AttentionAggregation(**kwargs)  # type: ignore[arg-type]
