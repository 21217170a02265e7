"""FedAvg is the sample-weighted mean of the deltas added to the current weights."""

from __future__ import annotations

import pytest
import torch

from tests.worldlm.strategies.helpers import assert_same, model, snapshot, update
from worldlm.strategies import EmptyUpdatesError, FedAvg, Update


def test_fedavg_equals_hand_computed_weighted_mean() -> None:
    current = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}
    updates = [
        Update("a", {"w": torch.tensor([3.0, 0.0]), "b": torch.tensor([1.0])}, num_samples=1),
        Update("b", {"w": torch.tensor([0.0, 6.0]), "b": torch.tensor([4.0])}, num_samples=3),
    ]
    result = FedAvg().aggregate(current, updates)
    # w + (1·Δa + 3·Δb) / 4
    assert torch.allclose(result.weights["w"], torch.tensor([1.0 + 3 / 4, 2.0 + 18 / 4]))
    assert torch.allclose(result.weights["b"], torch.tensor([(1 + 12) / 4]))
    assert result.accepted == ("a", "b")
    assert result.info["fedavg/samples"] == 4.0


def test_fedavg_multiplies_sample_count_by_update_weight() -> None:
    current = {"w": torch.zeros(1)}
    updates = [
        Update("a", {"w": torch.tensor([1.0])}, num_samples=2, weight=0.5),
        Update("b", {"w": torch.tensor([4.0])}, num_samples=1, weight=1.0),
    ]
    # weights 1 and 1: plain mean of 1 and 4
    assert torch.allclose(FedAvg().aggregate(current, updates).weights["w"], torch.tensor([2.5]))


def test_partial_update_only_contributes_to_tensors_it_covers() -> None:
    current = {"w": torch.zeros(1), "v": torch.ones(1)}
    updates = [
        Update("a", {"w": torch.tensor([2.0])}, num_samples=1),
        Update("b", {"w": torch.tensor([4.0]), "v": torch.tensor([1.0])}, num_samples=1),
    ]
    result = FedAvg().aggregate(current, updates)
    assert torch.allclose(result.weights["w"], torch.tensor([3.0]))
    assert torch.allclose(result.weights["v"], torch.tensor([2.0]))


def test_integer_buffers_are_carried_over_unchanged() -> None:
    current = model()
    result = FedAvg().aggregate(current, [update("a", current, seed=1)])
    assert torch.equal(result.weights["steps"], current["steps"])


def test_fedavg_keeps_dtype_of_current() -> None:
    current = {"w": torch.ones(3, dtype=torch.bfloat16)}
    updates = [Update("a", {"w": torch.ones(3)}, num_samples=1)]
    assert FedAvg().aggregate(current, updates).weights["w"].dtype == torch.bfloat16


def test_fedavg_does_not_mutate_inputs_or_alias_them() -> None:
    current = model()
    updates = [update("a", current, seed=1), update("b", current, seed=2)]
    before = snapshot(current)
    deltas = [snapshot(dict(u.delta)) for u in updates]
    result = FedAvg().aggregate(current, updates)
    assert_same(current, before)
    for u, d in zip(updates, deltas, strict=True):
        assert_same(dict(u.delta), d)
    result.weights["steps"].add_(1)
    assert torch.equal(current["steps"], before["steps"])


def test_all_zero_weights_raise() -> None:
    current = {"w": torch.zeros(1)}
    with pytest.raises(EmptyUpdatesError, match="zero weight"):
        FedAvg().aggregate(current, [Update("a", {"w": torch.ones(1)}, num_samples=1, weight=0.0)])
