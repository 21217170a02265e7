"""Residual merge: other federations' key layers as discounted attention candidates."""

from __future__ import annotations

import math

import pytest
import torch

from tests.worldlm.strategies.helpers import assert_same, snapshot
from worldlm.strategies import (
    ResidualEntry,
    ResidualMerge,
    RoundContext,
    StrategyConfigError,
    Update,
)
from worldlm.strategies.residual import residual_bias


def _round(residuals: list[ResidualEntry], gamma: float = 0.5) -> dict[str, float]:
    current = {"k": torch.zeros(2)}
    updates = [Update("child", {"k": torch.tensor([1.0, 0.0])}, num_samples=5)]
    merge = ResidualMerge(gamma=gamma)
    return merge.aggregate(current, updates, RoundContext(residuals=residuals)).info


def test_staler_residual_gets_smaller_alpha() -> None:
    foreign = {"k": torch.tensor([0.0, 1.0])}
    info = _round(
        [ResidualEntry("fresh", foreign, rounds_stale=0), ResidualEntry("old", foreign, 3)]
    )
    assert info["attention/alpha/residual:old"] < info["attention/alpha/residual:fresh"]
    # Equal distances: the ratio is exactly γ^Δrounds.
    ratio = info["attention/alpha/residual:old"] / info["attention/alpha/residual:fresh"]
    assert ratio == pytest.approx(0.5**3)


def test_bias_is_log_gamma_times_rounds_stale() -> None:
    assert residual_bias(0.9, 4) == pytest.approx(4 * math.log(0.9))
    assert residual_bias(1.0, 7) == 0.0


def test_residual_only_competes_on_tensors_it_holds() -> None:
    current = {"k": torch.zeros(1), "other": torch.zeros(1)}
    updates = [Update("child", {"k": torch.ones(1), "other": torch.ones(1)}, num_samples=1)]
    residual = ResidualEntry("fed-b", {"k": torch.full((1,), 3.0)}, rounds_stale=0)
    result = ResidualMerge().aggregate(current, updates, RoundContext(residuals=[residual]))
    assert torch.equal(result.weights["other"], torch.ones(1))  # only the child: α = 1
    assert not torch.allclose(result.weights["k"], torch.ones(1))  # foreign knowledge absorbed
    assert result.info["residual/alpha_total"] > 0


def test_mismatched_residual_tensor_is_skipped_and_counted() -> None:
    current = {"k": torch.zeros(2)}
    updates = [Update("child", {"k": torch.ones(2)}, num_samples=1)]
    bad = ResidualEntry("fed-b", {"k": torch.zeros(3)}, rounds_stale=0)
    result = ResidualMerge().aggregate(current, updates, RoundContext(residuals=[bad]))
    assert result.info["residual/skipped_tensors"] == 1.0
    assert result.info["residual/candidates"] == 0.0
    assert torch.allclose(result.weights["k"], torch.ones(2))


def test_without_residuals_it_is_plain_attention() -> None:
    info = _round([])
    assert info["attention/alpha/child"] == 1.0
    assert info["residual/alpha_total"] == 0.0


def test_residual_merge_does_not_mutate_residuals() -> None:
    current = {"k": torch.zeros(2)}
    foreign = {"k": torch.tensor([0.0, 1.0])}
    before = snapshot(foreign)
    ResidualMerge().aggregate(
        current,
        [Update("child", {"k": torch.ones(2)}, num_samples=1)],
        RoundContext(residuals=[ResidualEntry("fed-b", foreign, 1)]),
    )
    assert_same(foreign, before)


def test_gamma_outside_unit_interval_is_config_error() -> None:
    with pytest.raises(StrategyConfigError):
        ResidualMerge(gamma=0.0)


def _near_and_far_alpha(sign: int | None) -> tuple[float, float]:
    current = {"k": torch.zeros(2)}
    updates = [Update("child", {"k": torch.tensor([1.0, 0.0])}, num_samples=5)]
    residuals = [
        ResidualEntry("near", {"k": torch.tensor([0.5, 0.0])}),
        ResidualEntry("far", {"k": torch.tensor([0.0, 4.0])}),
    ]
    info = (
        ResidualMerge(gamma=1.0, sign=sign)
        .aggregate(current, updates, RoundContext(residuals=residuals))
        .info
    )
    return info["attention/alpha/residual:near"], info["attention/alpha/residual:far"]


def test_residuals_follow_the_rule_sign_by_default_so_the_farthest_weighs_most() -> None:
    near, far = _near_and_far_alpha(None)
    assert far > near


def test_residual_sign_minus_one_scores_residuals_by_similarity() -> None:
    near, far = _near_and_far_alpha(-1)
    assert near > far
    # Only the residuals' sign changes: the child's own candidate keeps the rule's sign.
    assert near == pytest.approx(math.exp(-0.5) / (math.exp(1.0) + math.exp(-0.5) + math.exp(-4.0)))


def test_residual_sign_must_be_plus_or_minus_one() -> None:
    with pytest.raises(StrategyConfigError, match="residual sign"):
        ResidualMerge(sign=2)
