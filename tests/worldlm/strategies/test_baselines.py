"""Baselines: local-only keeps everything, FedPer keeps the key layers, FedAvg averages all."""

from __future__ import annotations

import torch

from tests.worldlm.strategies.helpers import KEY_NAMES, assert_same, model, update
from worldlm.strategies import FedAvg, fedper, flat_fedavg, hierarchical_fedavg, local_only


def test_local_only_returns_current_unchanged_and_marks_it() -> None:
    current = model()
    result = local_only().aggregate(current, [update("a", current, seed=1)])
    assert_same(result.weights, current)
    assert result.aggregated is False
    assert result.weights["norm.weight"] is not current["norm.weight"]


def test_fedper_passes_key_layers_through_and_averages_backbone() -> None:
    current = model()
    updates = [update("a", current, seed=1), update("b", current, seed=2)]
    result = fedper(KEY_NAMES).aggregate(current, updates)
    averaged = FedAvg().aggregate(current, updates).weights
    for name in KEY_NAMES:
        assert torch.equal(result.weights[name], current[name])
    assert torch.equal(result.weights["embed.weight"], averaged["embed.weight"])
    assert result.aggregated is True


def test_flat_and_hierarchical_fedavg_average_every_tensor() -> None:
    current = model()
    updates = [update("a", current, seed=1), update("b", current, seed=2, num_samples=3)]
    expected = FedAvg().aggregate(current, updates).weights
    assert_same(flat_fedavg().aggregate(current, updates).weights, expected)
    assert_same(hierarchical_fedavg().aggregate(current, updates).weights, expected)
