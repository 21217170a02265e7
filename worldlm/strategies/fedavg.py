"""FedAvg: the sample-weighted mean of the children's deltas, added to the current weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from worldlm.strategies.base import (
    AggregateResult,
    EmptyUpdatesError,
    RoundContext,
    Tensors,
    Update,
    check_updates,
    compute_dtype,
    is_learned,
)


def update_weight(update: Update) -> float:
    """FedAvg's weight of one update: its sample count times its wrapper-set multiplier."""
    return float(update.num_samples) * update.weight


def weighted_mean_delta(current: Tensors, updates: Sequence[Update]) -> dict[str, Tensor]:
    """Per tensor, the weighted mean of the deltas that cover it.

    The weight of an update is ``num_samples * weight``. A tensor is averaged over the
    updates that cover it (a partial update does not drag others towards zero); tensors no
    update covers, and non-floating tensors, are absent from the result. Means are in the
    compute dtype (at least float32). Raises ``EmptyUpdatesError`` when all weights are 0.
    """
    weights = [update_weight(u) for u in updates]
    if sum(weights) <= 0:
        raise EmptyUpdatesError(
            "all updates have zero weight (num_samples * weight): "
            + ", ".join(repr(u.sender) for u in updates)
        )
    means: dict[str, Tensor] = {}
    for name, cur in current.items():
        if not is_learned(cur):
            continue
        dtype = compute_dtype(cur)
        total: Tensor | None = None
        weight_sum = 0.0
        # Fixed summation order (the order of ``updates``) keeps the result deterministic.
        for update, w in zip(updates, weights, strict=True):
            delta = update.delta.get(name)
            if delta is None or w == 0:
                continue
            term = delta.to(device=cur.device, dtype=dtype) * w
            total = term if total is None else total.add_(term)
            weight_sum += w
        if total is not None:
            means[name] = total.div_(weight_sum)
    return means


class FedAvg:
    """Federated averaging (McMahan et al., 2017): w ← w + Σ n_i·a_i·Δ_i / Σ n_i·a_i.

    n_i is the update's sample count, a_i its wrapper-set weight (1 by default).
    """

    def aggregate(
        self,
        current: Tensors,
        updates: Sequence[Update],
        context: RoundContext | None = None,
    ) -> AggregateResult:
        """Add the weighted mean delta to ``current``; see ``weighted_mean_delta``."""
        check_updates(current, updates)
        means = weighted_mean_delta(current, updates)
        weights = {
            name: (cur.to(means[name].dtype) + means[name]).to(cur.dtype)
            if name in means
            else cur.detach().clone()
            for name, cur in current.items()
        }
        info = {
            "fedavg/updates": float(len(updates)),
            "fedavg/samples": float(sum(u.num_samples for u in updates)),
        }
        return AggregateResult(
            weights=weights, info=info, accepted=tuple(u.sender for u in updates)
        )

    def state_dict(self) -> dict[str, Any]:
        """FedAvg is stateless."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""
