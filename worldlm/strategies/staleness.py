"""Staleness policy for asynchronous rounds: discount stale updates, reject past a bound.

An update trained from a model ``s`` versions old is weighted by (1 + s)^−a (the polynomial
discount of FedAsync/FedBuff, Xie et al. 2019; Nguyen et al. 2022) and rejected when
s > bound. It wraps any strategy: the discount multiplies the update's ``weight`` field,
which FedAvg multiplies into the sample weight and attention turns into a logit bias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worldlm.strategies.base import (
    AggregateResult,
    Rejection,
    RoundContext,
    Strategy,
    StrategyConfigError,
    Tensors,
    Update,
    copy_weights,
    merge_rejections,
)


def staleness_weight(staleness: int, exponent: float) -> float:
    """(1 + s)^−a: 1 for a fresh update, decreasing polynomially with staleness."""
    return float((1.0 + staleness) ** -exponent)


class StalenessPolicy:
    """Wraps a strategy with the staleness discount and bound.

    If every update is rejected the round applies nothing: the result carries ``current``
    unchanged, ``aggregated=False`` and the rejections. It never raises for staleness.

    Args:
        inner: the strategy that aggregates the accepted, discounted updates.
        exponent: a ≥ 0 (0 = no discount).
        bound: the largest accepted staleness; None = no bound.
    """

    def __init__(self, inner: Strategy, exponent: float = 0.5, bound: int | None = None):
        if not exponent >= 0:
            raise StrategyConfigError(f"staleness exponent must be >= 0, got {exponent}")
        if bound is not None and bound < 0:
            raise StrategyConfigError(f"staleness bound must be >= 0, got {bound}")
        self.inner = inner
        self.exponent = exponent
        self.bound = bound

    def aggregate(
        self,
        current: Tensors,
        updates: Sequence[Update],
        context: RoundContext | None = None,
    ) -> AggregateResult:
        """Reject updates past the bound, discount the rest, and aggregate them with inner."""
        accepted: list[Update] = []
        rejected: list[Rejection] = []
        for update in updates:
            if self.bound is not None and update.staleness > self.bound:
                detail = f"staleness {update.staleness} > bound {self.bound}"
                rejected.append(Rejection(update.sender, "stale", detail))
                continue
            discount = staleness_weight(update.staleness, self.exponent)
            accepted.append(update.with_weight(update.weight * discount))
        info = {
            "staleness/rejected": float(len(rejected)),
            "staleness/mean": (
                sum(u.staleness for u in accepted) / len(accepted) if accepted else 0.0
            ),
        }
        if not accepted and rejected:
            return AggregateResult(
                weights=copy_weights(current),
                info=info,
                rejected=tuple(rejected),
                aggregated=False,
            )
        # An empty round (no updates at all) is the inner strategy's error to raise.
        result = self.inner.aggregate(current, accepted, context)
        return AggregateResult(
            weights=result.weights,
            info={**result.info, **info},
            accepted=result.accepted,
            rejected=merge_rejections(rejected, result.rejected),
            aggregated=result.aggregated,
        )

    def state_dict(self) -> dict[str, Any]:
        """The inner strategy's state (the policy itself is stateless)."""
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the inner strategy's state."""
        self.inner.load_state_dict(state.get("inner", {}))
