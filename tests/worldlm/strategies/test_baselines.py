"""The no-aggregation baselines: local-only keeps everything, FedPer keeps the key layers."""

from __future__ import annotations

import torch

from tests.worldlm.strategies.helpers import KEY_NAMES, assert_same, model, update
from worldlm.strategies import FedAvg, StrategyPolicy, make_strategy


def test_local_backbone_and_key_return_current_unchanged_and_mark_it() -> None:
    current = model()
    local = make_strategy(StrategyPolicy(backbone="local", key="local", residual_gamma=None))
    result = local.aggregate(current, [update("a", current, seed=1)])
    assert_same(result.weights, current)
    assert result.aggregated is False
    assert result.weights["norm.weight"] is not current["norm.weight"]


def test_fedper_passes_key_layers_through_and_averages_backbone() -> None:
    current = model()
    updates = [update("a", current, seed=1), update("b", current, seed=2)]
    fedper = make_strategy(StrategyPolicy(key="local", residual_gamma=None), KEY_NAMES)
    result = fedper.aggregate(current, updates)
    averaged = FedAvg().aggregate(current, updates).weights
    for name in KEY_NAMES:
        assert torch.equal(result.weights[name], current[name])
        assert not torch.equal(averaged[name], current[name])  # FedAvg would have moved it
    assert torch.equal(result.weights["embed.weight"], averaged["embed.weight"])
    assert result.aggregated is True


def test_mean_key_averages_key_layers_like_the_backbone() -> None:
    current = model()
    updates = [update("a", current, seed=1), update("b", current, seed=2, num_samples=3)]
    mean = make_strategy(StrategyPolicy(key="mean", residual_gamma=None), KEY_NAMES)
    assert_same(
        mean.aggregate(current, updates).weights, FedAvg().aggregate(current, updates).weights
    )
