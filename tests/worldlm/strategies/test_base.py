"""Validation shared by every strategy: clear errors naming sender and tensor."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tests.worldlm.strategies.helpers import model, update
from worldlm.strategies import (
    AttentionAggregation,
    DifferentialPrivacy,
    EmptyUpdatesError,
    FedAvg,
    InvalidUpdateError,
    NonFiniteError,
    ResidualMerge,
    ServerOptimizer,
    Strategy,
    StrategyError,
    TensorMismatchError,
    Update,
)
from worldlm.strategies.base import MIN_SAMPLES, update_problem

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "fedavg": FedAvg,
    "fedavgm": lambda: ServerOptimizer(momentum=0.9),
    "attention": AttentionAggregation,
    "residual": ResidualMerge,
    "dp": lambda: DifferentialPrivacy(FedAvg(), clip_norm=1.0, noise_multiplier=1.0),
}


@pytest.fixture(params=sorted(STRATEGIES))
def strategy(request: pytest.FixtureRequest) -> Strategy:
    return STRATEGIES[request.param]()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_delta_raises_naming_sender_and_tensor(strategy: Strategy, bad: float) -> None:
    current = model()
    poisoned = update("client-b", current, seed=2)
    delta = dict(poisoned.delta)
    delta["block0.weight"] = delta["block0.weight"].clone()
    delta["block0.weight"][1, 2] = bad
    updates = [update("client-a", current, seed=1), poisoned.with_delta(delta)]
    with pytest.raises(NonFiniteError, match=r"'client-b'.*'block0\.weight'"):
        strategy.aggregate(current, updates)


def test_unknown_tensor_raises_mismatch(strategy: Strategy) -> None:
    current = model()
    bad = Update("client-x", {"ghost.weight": torch.zeros(2)}, num_samples=1)
    with pytest.raises(TensorMismatchError, match=r"'client-x'.*'ghost\.weight'"):
        strategy.aggregate(current, [bad])


def test_wrong_shape_raises_mismatch(strategy: Strategy) -> None:
    current = model()
    bad = Update("client-x", {"norm.weight": torch.zeros(5)}, num_samples=1)
    with pytest.raises(TensorMismatchError, match=r"'client-x'.*'norm\.weight'.*\(5,\)"):
        strategy.aggregate(current, [bad])


def test_empty_round_raises(strategy: Strategy) -> None:
    with pytest.raises(EmptyUpdatesError):
        strategy.aggregate(model(), [])


@pytest.mark.parametrize("samples", [-1, 0])
def test_an_update_without_samples_raises(strategy: Strategy, samples: int) -> None:
    current = model()
    with pytest.raises(InvalidUpdateError, match=f"client-n.*sample count {samples}"):
        strategy.aggregate(current, [update("client-n", current, seed=1, num_samples=samples)])


def test_one_no_samples_rule_below_min_samples() -> None:
    """The rule the federation core admits by: fewer than ``MIN_SAMPLES`` is ``no_samples``."""
    current = model()
    for samples, refused in [(MIN_SAMPLES - 1, True), (MIN_SAMPLES, False)]:
        problem = update_problem(current, update("c", current, seed=1, num_samples=samples))
        assert (problem is not None and problem.reason == "no_samples") == refused, samples


def test_errors_are_value_errors_and_not_retriable() -> None:
    assert issubclass(StrategyError, ValueError)
    assert StrategyError.retriable is False
