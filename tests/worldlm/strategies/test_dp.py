"""Differential privacy: clipping bound, noise std σ·C, opacus accounting, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.worldlm.strategies.helpers import assert_same, model, snapshot, update
from worldlm.strategies import (
    DifferentialPrivacy,
    FedAvg,
    RoundContext,
    ServerOptimizer,
    StrategyConfigError,
    Update,
)
from worldlm.strategies.dp import clip_delta, delta_norm


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_each_clipped_update_has_norm_at_most_c(scale: float) -> None:
    current = model()
    for seed in range(5):
        delta = {n: t * scale for n, t in update("a", current, seed=seed).delta.items()}
        clipped, was_clipped = clip_delta(delta, clip_norm=1.5)
        assert delta_norm(clipped) <= 1.5 * (1 + 1e-6)
        assert was_clipped == (delta_norm(delta) > 1.5)
        if not was_clipped:
            assert_same(clipped, delta)


def test_without_noise_the_mean_of_clipped_deltas_is_applied() -> None:
    current = {"w": torch.zeros(2)}
    updates = [
        Update("big", {"w": torch.tensor([30.0, 40.0])}, num_samples=100),  # norm 50 → 1
        Update("small", {"w": torch.tensor([0.0, 0.5])}, num_samples=1),  # kept
    ]
    dp = DifferentialPrivacy(FedAvg(), clip_norm=1.0, noise_multiplier=0.0)
    result = dp.aggregate(current, updates)
    # Sample counts are ignored: the plain mean of [0.6, 0.8] and [0, 0.5].
    assert torch.allclose(result.weights["w"], torch.tensor([0.3, 0.65]))
    assert result.info["dp/clip_fraction"] == 0.5
    assert result.info["dp/epsilon"] == math.inf


def test_empirical_noise_std_matches_sigma_times_c() -> None:
    clip, sigma, n = 2.0, 1.5, 4
    current = {"w": torch.zeros(200_000)}
    updates = [Update(f"c{i}", {"w": torch.zeros(200_000)}, num_samples=1) for i in range(n)]
    dp = DifferentialPrivacy(FedAvg(), clip_norm=clip, noise_multiplier=sigma, seed=7)
    result = dp.aggregate(current, updates)
    # The noise is added to the sum and divided by n: on the sum its std is σ·C.
    noise_on_sum = result.weights["w"] * n
    assert noise_on_sum.std().item() == pytest.approx(sigma * clip, rel=0.02)
    assert abs(noise_on_sum.mean().item()) < 0.05
    assert result.info["dp/noise_std"] == sigma * clip
    assert result.info["dp/noise_std_mean"] == sigma * clip / n


def test_noise_is_deterministic_given_seed() -> None:
    current = model()
    updates = [update("a", current, seed=1)]
    a = DifferentialPrivacy(FedAvg(), 1.0, 1.0, seed=3).aggregate(current, updates)
    b = DifferentialPrivacy(FedAvg(), 1.0, 1.0, seed=3).aggregate(current, updates)
    assert_same(a.weights, b.weights)


def test_epsilon_grows_with_rounds() -> None:
    current = {"w": torch.zeros(3)}
    dp = DifferentialPrivacy(FedAvg(), clip_norm=1.0, noise_multiplier=1.1, sample_rate=0.1)
    epsilons = []
    for _ in range(4):
        result = dp.aggregate(current, [Update("a", {"w": torch.ones(3)}, num_samples=1)])
        epsilons.append(result.info["dp/epsilon"])
    assert all(0 < e for e in epsilons)
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == 4
    assert result.info["dp/rounds"] == 4.0


def test_sample_rate_from_round_context_is_accounted() -> None:
    current = {"w": torch.zeros(3)}
    updates = [Update("a", {"w": torch.ones(3)}, num_samples=1)]
    low = DifferentialPrivacy(FedAvg(), 1.0, 1.0, sample_rate=1.0)
    high = DifferentialPrivacy(FedAvg(), 1.0, 1.0, sample_rate=1.0)
    eps_low = low.aggregate(current, updates, RoundContext(sample_rate=0.05)).info["dp/epsilon"]
    eps_high = high.aggregate(current, updates).info["dp/epsilon"]
    assert eps_low < eps_high
    assert low.state_dict()["accountant_history"] == [[1.0, 0.05, 1]]


def test_state_dict_round_trips_accountant_generator_and_inner() -> None:
    current = model()
    first = DifferentialPrivacy(ServerOptimizer(momentum=0.9), 1.0, 1.0, seed=5)
    first.aggregate(current, [update("a", current, seed=1)])
    state = first.state_dict()
    json.dumps(state["accountant_history"])  # the accountant's history is JSON-able
    resumed = DifferentialPrivacy(ServerOptimizer(momentum=0.9), 1.0, 1.0, seed=999)
    resumed.load_state_dict(state)
    assert resumed.epsilon() == first.epsilon()
    nxt = [update("a", current, seed=2)]
    assert_same(first.aggregate(current, nxt).weights, resumed.aggregate(current, nxt).weights)
    assert resumed.epsilon() == first.epsilon()


def test_dp_does_not_mutate_inputs() -> None:
    current = model()
    updates = [update("a", current, seed=1), update("b", current, seed=2)]
    before, deltas = snapshot(current), [snapshot(dict(u.delta)) for u in updates]
    DifferentialPrivacy(FedAvg(), clip_norm=0.1, noise_multiplier=1.0).aggregate(current, updates)
    assert_same(current, before)
    for u, d in zip(updates, deltas, strict=True):
        assert_same(dict(u.delta), d)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip_norm": 0.0, "noise_multiplier": 1.0},
        {"clip_norm": 1.0, "noise_multiplier": -1.0},
        {"clip_norm": 1.0, "noise_multiplier": 1.0, "sample_rate": 0.0},
    ],
)
def test_invalid_parameters_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(StrategyConfigError):
        DifferentialPrivacy(FedAvg(), **kwargs)  # type: ignore[arg-type]
