"""Differential privacy on the edge from a federation to its children (DP-FedAvg).

Per round (McMahan et al., 2018, "Learning differentially private recurrent language
models"; Flower's server-side fixed clipping):

1. clip each update's delta to L2 norm C, the norm taken over all tensors it covers;
2. sum the clipped deltas, each scaled by its weight multiplier clamped to [0, 1];
3. add Gaussian noise N(0, (σ·C)²) to every coordinate of the sum (seeded generator);
4. divide by n, the number of updates received this round;
5. hand the result to the inner strategy as one update (sender ``"dp"``).

Choices, and why:

* Sample counts are ignored: weighting by them would let one child move the sum by more
  than C, breaking the sensitivity the noise is calibrated to. Weight multipliers ≤ 1
  (staleness discounts) keep each contribution within C, so they are honoured.
* Dividing by the realised count n rather than an expected count q·N treats n as public,
  as Flower and most DP-FedAvg deployments do; the aggregator sees who reported anyway.
  The noise on the mean then has std σ·C/n.
* The inner strategy sees a single privatized update: FedAvg and the outer optimizers
  apply the noisy mean; attention over one candidate moves by ε times it (residual
  candidates, public to the federation already, still compete).

The spent (ε, δ) is tracked with opacus's RDP accountant, one step per round with noise
multiplier σ and sample rate q = the fraction of members sampled that round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from worldlm.strategies.base import (
    AggregateResult,
    RoundContext,
    Strategy,
    StrategyConfigError,
    Tensors,
    Update,
    check_updates,
    compute_dtype,
    is_learned,
)

if TYPE_CHECKING:
    from opacus.accountants import RDPAccountant

DP_SENDER = "dp"
"""Sender id of the privatized update handed to the inner strategy."""


def delta_norm(delta: Tensors) -> float:
    """The L2 norm of a delta over all its floating tensors, in float64."""
    total = 0.0
    for tensor in delta.values():
        if tensor.is_floating_point():
            total += float(tensor.double().pow(2).sum())
    return math.sqrt(total)


def clip_delta(delta: Tensors, clip_norm: float) -> tuple[dict[str, Tensor], bool]:
    """``delta`` scaled to L2 norm at most ``clip_norm``; also whether it was clipped.

    Returns fresh tensors in the compute dtype; non-floating tensors are dropped.
    """
    norm = delta_norm(delta)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    clipped = {name: t.to(compute_dtype(t)) * factor for name, t in delta.items() if is_learned(t)}
    return clipped, norm > clip_norm


class DifferentialPrivacy:
    """Wraps a strategy with clipping, Gaussian noise and (ε, δ) accounting.

    Args:
        inner: the strategy that applies the privatized mean update.
        clip_norm: C > 0, the L2 bound on each update's delta.
        noise_multiplier: σ ≥ 0; the noise std on the sum is σ·C.
        delta: δ for reporting ε.
        sample_rate: default q in (0, 1] when the round context gives none.
        seed: seed of the noise generator (the generator state is checkpointed).
    """

    def __init__(
        self,
        inner: Strategy,
        clip_norm: float,
        noise_multiplier: float,
        delta: float = 1e-5,
        sample_rate: float = 1.0,
        seed: int = 0,
    ):
        if not clip_norm > 0:
            raise StrategyConfigError(f"dp clip_norm must be > 0, got {clip_norm}")
        if not noise_multiplier >= 0:
            raise StrategyConfigError(f"dp noise_multiplier must be >= 0, got {noise_multiplier}")
        if not 0 < delta < 1:
            raise StrategyConfigError(f"dp delta must be in (0, 1), got {delta}")
        _check_sample_rate(sample_rate)
        # Imported here: opacus's package import costs seconds, and only DP runs need it.
        from opacus.accountants import RDPAccountant

        self.inner = inner
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.sample_rate = sample_rate
        self.accountant: RDPAccountant = RDPAccountant()
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def noise_std(self) -> float:
        """Std of the Gaussian noise added to the sum of clipped deltas: σ·C."""
        return self.noise_multiplier * self.clip_norm

    def epsilon(self) -> float:
        """(ε at the configured δ) spent so far; 0 before the first round, inf without noise."""
        history = self.accountant.history
        if not history:
            return 0.0
        if any(sigma == 0 for sigma, _, _ in history):
            return math.inf  # a round without noise released the mean in the clear
        return float(self.accountant.get_epsilon(self.delta))

    def aggregate(
        self,
        current: Tensors,
        updates: Sequence[Update],
        context: RoundContext | None = None,
    ) -> AggregateResult:
        """Privatize the round's mean delta, account for it, and aggregate it with inner."""
        check_updates(current, updates)
        sample_rate = self.sample_rate
        if context is not None and context.sample_rate is not None:
            sample_rate = _check_sample_rate(context.sample_rate)
        sums: dict[str, Tensor] = {}
        clipped_count = 0
        for update in updates:
            clipped, was_clipped = clip_delta(update.delta, self.clip_norm)
            clipped_count += was_clipped
            scale = min(1.0, update.weight)
            for name, tensor in clipped.items():
                term = tensor.to(current[name].device) * scale
                sums[name] = term if name not in sums else sums[name].add_(term)
        count = len(updates)
        mean: dict[str, Tensor] = {}
        for name, total in sums.items():
            # Noise is drawn on CPU from the owned generator, so runs are reproducible
            # whatever device the tensors live on.
            noise = torch.randn(total.shape, generator=self.generator, dtype=total.dtype)
            mean[name] = (total + noise.to(total.device) * self.noise_std) / count
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate)
        private = Update(
            sender=DP_SENDER, delta=mean, num_samples=sum(u.num_samples for u in updates)
        )
        result = self.inner.aggregate(current, [private], context)
        info = {
            **result.info,
            "dp/noise_std": self.noise_std,
            "dp/noise_std_mean": self.noise_std / count,
            "dp/clip_fraction": clipped_count / count,
            "dp/epsilon": self.epsilon(),
            "dp/delta": self.delta,
            "dp/sample_rate": sample_rate,
            "dp/rounds": float(sum(steps for _, _, steps in self.accountant.history)),
        }
        return AggregateResult(
            weights=result.weights,
            info=info,
            accepted=tuple(u.sender for u in updates),
            rejected=result.rejected,
            aggregated=result.aggregated,
        )

    def state_dict(self) -> dict[str, Any]:
        """Accountant history (JSON-able), noise generator state, and the inner state."""
        return {
            "accountant_history": [list(h) for h in self.accountant.history],
            "generator_state": self.generator.get_state(),
            "inner": self.inner.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore accountant history, generator state and inner state."""
        history = state.get("accountant_history", [])
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
        generator_state = state.get("generator_state")
        if generator_state is not None:
            self.generator.set_state(generator_state)
        self.inner.load_state_dict(state.get("inner", {}))


def _check_sample_rate(sample_rate: float) -> float:
    if not 0 < sample_rate <= 1:
        raise StrategyConfigError(f"dp sample_rate must be in (0, 1], got {sample_rate}")
    return sample_rate
