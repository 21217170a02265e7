"""Outer optimizers: FedAvg at lr=1, β=0; momentum as torch.optim.SGD; checkpointable."""

from __future__ import annotations

import pytest
import torch

from tests.worldlm.strategies.helpers import assert_same, model, snapshot, update
from worldlm.strategies import FedAvg, ServerOptimizer, StrategyConfigError, Update


@pytest.mark.parametrize("nesterov", [False, True])
def test_lr_one_momentum_zero_equals_fedavg_exactly_over_rounds(nesterov: bool) -> None:
    outer = ServerOptimizer(server_lr=1.0, momentum=0.0, nesterov=nesterov)
    w_outer = model()
    w_avg = model()
    for r in range(3):
        updates = [
            update("a", w_avg, seed=10 * r, num_samples=3),
            update("b", w_avg, seed=10 * r + 1),
        ]
        w_outer = outer.aggregate(w_outer, updates).weights
        w_avg = FedAvg().aggregate(w_avg, updates).weights
        assert_same(w_outer, w_avg)


def _two_rounds(nesterov: bool) -> tuple[torch.Tensor, torch.Tensor]:
    outer = ServerOptimizer(server_lr=0.5, momentum=0.9, nesterov=nesterov)
    w0 = {"w": torch.tensor([1.0])}
    w1 = outer.aggregate(w0, [Update("a", {"w": torch.tensor([-2.0])}, num_samples=1)]).weights
    w2 = outer.aggregate(w1, [Update("a", {"w": torch.tensor([4.0])}, num_samples=1)]).weights
    return w1["w"], w2["w"]


def test_heavy_ball_momentum_accumulates_as_hand_computed() -> None:
    # g1 = 2, m1 = 2, w1 = 1 − 0.5·2 = 0; g2 = −4, m2 = 0.9·2 − 4 = −2.2, w2 = 0 + 1.1 = 1.1
    w1, w2 = _two_rounds(nesterov=False)
    assert torch.allclose(w1, torch.tensor([0.0]))
    assert torch.allclose(w2, torch.tensor([1.1]))


def test_nesterov_momentum_as_hand_computed() -> None:
    # step1 = g1 + 0.9·m1 = 2 + 1.8 = 3.8, w1 = 1 − 1.9 = −0.9;
    # m2 = −2.2, step2 = −4 + 0.9·(−2.2) = −5.98, w2 = −0.9 + 2.99 = 2.09
    w1, w2 = _two_rounds(nesterov=True)
    assert torch.allclose(w1, torch.tensor([-0.9]))
    assert torch.allclose(w2, torch.tensor([2.09]))


def test_state_dict_round_trip_resumes_momentum_exactly() -> None:
    first = ServerOptimizer(server_lr=0.7, momentum=0.9)
    w = model()
    w = first.aggregate(w, [update("a", w, seed=1)]).weights
    state = first.state_dict()
    resumed = ServerOptimizer(server_lr=0.7, momentum=0.9)
    resumed.load_state_dict(state)
    nxt = [update("a", w, seed=2)]
    assert_same(first.aggregate(w, nxt).weights, resumed.aggregate(w, nxt).weights)
    assert resumed.state_dict()["steps"] == 2


def test_state_dict_is_a_copy_not_the_live_buffers() -> None:
    outer = ServerOptimizer(momentum=0.9)
    w = model()
    outer.aggregate(w, [update("a", w, seed=1)])
    state = outer.state_dict()
    saved = snapshot(state["momentum_buffers"])
    outer.aggregate(w, [update("a", w, seed=2)])
    assert_same(state["momentum_buffers"], saved)


def test_uncovered_tensor_is_unchanged_and_keeps_its_buffer() -> None:
    outer = ServerOptimizer(momentum=0.9)
    w = {"u": torch.ones(1), "v": torch.ones(1)}
    w = outer.aggregate(w, [Update("a", {"u": torch.ones(1), "v": torch.ones(1)}, 1)]).weights
    v_buffer = outer.state_dict()["momentum_buffers"]["v"].clone()
    w2 = outer.aggregate(w, [Update("a", {"u": torch.ones(1)}, 1)]).weights
    assert torch.equal(w2["v"], w["v"])
    assert torch.equal(outer.state_dict()["momentum_buffers"]["v"], v_buffer)


def test_invalid_momentum_is_a_config_error() -> None:
    with pytest.raises(StrategyConfigError):
        ServerOptimizer(momentum=1.0)
