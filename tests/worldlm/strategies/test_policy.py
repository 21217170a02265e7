"""The policy factory builds the composition a policy names."""

from __future__ import annotations

import pytest
import torch

from tests.worldlm.strategies.helpers import KEY_NAMES, assert_same, model, update
from worldlm.strategies import (
    DifferentialPrivacy,
    DPPolicy,
    FedAvg,
    Layered,
    ResidualEntry,
    RoundContext,
    StalenessPolicy,
    StrategyConfigError,
    StrategyPolicy,
    make_strategy,
)


def test_key_fedavg_policy_equals_fedavg_with_or_without_key_names() -> None:
    current = model()
    updates = [update("a", current, seed=1), update("b", current, seed=2, num_samples=4)]
    expected = FedAvg().aggregate(current, updates).weights
    for key_names in (None, KEY_NAMES):
        strategy = make_strategy(StrategyPolicy(key="fedavg", residual_gamma=None), key_names)
        assert_same(strategy.aggregate(current, updates).weights, expected)


def test_default_policy_averages_backbone_and_attends_key_layers_with_residuals() -> None:
    current = model()
    updates = [update("a", current, seed=1), update("b", current, seed=2)]
    residual = ResidualEntry("fed-b", {"norm.weight": torch.zeros(4)}, rounds_stale=1)
    strategy = make_strategy(StrategyPolicy(), KEY_NAMES)
    result = strategy.aggregate(current, updates, RoundContext(residuals=[residual]))
    expected = FedAvg().aggregate(current, updates).weights
    assert torch.equal(result.weights["embed.weight"], expected["embed.weight"])
    assert "key/residual/alpha_total" in result.info
    assert result.info["key/residual/candidates"] == 1.0


def test_local_policy_applies_nothing() -> None:
    current = model()
    result = make_strategy(StrategyPolicy(backbone="local", key="local")).aggregate(
        current, [update("a", current, seed=1)]
    )
    assert result.aggregated is False
    assert_same(result.weights, current)


def test_dp_and_staleness_wrap_the_split_in_that_order() -> None:
    policy = StrategyPolicy(dp=DPPolicy(clip_norm=1.0, noise_multiplier=1.0), staleness_bound=3)
    strategy = make_strategy(policy, KEY_NAMES)
    assert isinstance(strategy, StalenessPolicy) and strategy.bound == 3
    assert isinstance(strategy.inner, DifferentialPrivacy)
    assert isinstance(strategy.inner.inner, Layered)


def test_unknown_field_value_is_config_error() -> None:
    with pytest.raises(StrategyConfigError, match="backbone"):
        StrategyPolicy(backbone="adam")  # type: ignore[arg-type]
