"""The B/K split routes tensors by name to two strategies and returns the union."""

from __future__ import annotations

import pytest
import torch

from tests.worldlm.strategies.helpers import KEY_NAMES, assert_same, model, snapshot, update
from worldlm.strategies import (
    AttentionAggregation,
    FedAvg,
    KeepCurrent,
    Layered,
    ServerOptimizer,
    StalenessPolicy,
    TensorMismatchError,
    UnroutedTensorError,
    Update,
)


def test_routes_backbone_and_key_tensors_by_name() -> None:
    current = model()
    updates = [update("a", current, seed=1, num_samples=1), update("b", current, seed=2)]
    result = Layered(FedAvg(), KeepCurrent(), KEY_NAMES).aggregate(current, updates)
    fedavg = FedAvg().aggregate(current, updates).weights
    for name in current:
        expected = current[name] if name in KEY_NAMES else fedavg[name]
        assert torch.equal(result.weights[name], expected), name
    assert result.info["key/kept/tensors"] == 2.0
    assert "backbone/fedavg/updates" in result.info


def test_predicate_selects_key_layers() -> None:
    current = model()
    layered = Layered(KeepCurrent(), FedAvg(), lambda n: n.startswith("block1"))
    result = layered.aggregate(current, [update("a", current, seed=1)])
    assert not torch.equal(result.weights["block1.weight"], current["block1.weight"])
    assert torch.equal(result.weights["norm.weight"], current["norm.weight"])


def test_name_routed_nowhere_raises() -> None:
    current = model()
    backbone = {"embed.weight", "block0.weight", "steps"}  # norm.weight in neither group
    layered = Layered(FedAvg(), FedAvg(), {"block1.weight"}, backbone_names=backbone)
    with pytest.raises(UnroutedTensorError, match=r"'norm\.weight'.*no group"):
        layered.aggregate(current, [update("a", current, seed=1)])


def test_name_routed_twice_raises() -> None:
    current = model()
    layered = Layered(FedAvg(), FedAvg(), KEY_NAMES, backbone_names=lambda n: True)
    with pytest.raises(UnroutedTensorError, match="both"):
        layered.aggregate(current, [update("a", current, seed=1)])


def test_update_tensor_unknown_to_the_model_raises() -> None:
    current = model()
    bad = Update("x", {"ghost": torch.zeros(1)}, num_samples=1)
    with pytest.raises(TensorMismatchError, match=r"'x'.*'ghost'"):
        Layered(FedAvg(), FedAvg(), KEY_NAMES).aggregate(current, [bad])


def test_layered_merges_rejections_from_both_groups_once() -> None:
    current = model()
    late = update("late", current, seed=1, staleness=5)
    ok = update("ok", current, seed=2)
    layered = Layered(
        StalenessPolicy(FedAvg(), bound=2),
        StalenessPolicy(AttentionAggregation(), bound=2),
        KEY_NAMES,
    )
    result = layered.aggregate(current, [late, ok])
    assert [r.sender for r in result.rejected] == ["late"]
    assert result.accepted == ("ok",)


def test_state_nests_both_strategies() -> None:
    current = model()
    layered = Layered(ServerOptimizer(momentum=0.9), AttentionAggregation(), KEY_NAMES)
    layered.aggregate(current, [update("a", current, seed=1)])
    state = layered.state_dict()
    assert set(state["backbone"]["momentum_buffers"]) == {"embed.weight", "block0.weight"}
    again = Layered(ServerOptimizer(momentum=0.9), AttentionAggregation(), KEY_NAMES)
    again.load_state_dict(state)
    assert_same(
        again.state_dict()["backbone"]["momentum_buffers"], state["backbone"]["momentum_buffers"]
    )


def test_layered_does_not_mutate_inputs() -> None:
    current = model()
    updates = [update("a", current, seed=1), update("b", current, seed=2)]
    before, deltas = snapshot(current), [snapshot(dict(u.delta)) for u in updates]
    Layered(FedAvg(), AttentionAggregation(), KEY_NAMES).aggregate(current, updates)
    assert_same(current, before)
    for u, d in zip(updates, deltas, strict=True):
        assert_same(dict(u.delta), d)
