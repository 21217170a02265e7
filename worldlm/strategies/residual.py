"""Residual merge: other federations' key layers as extra attention candidates.

When a federation closes a round it writes its key layers (its residual embedding) to a
cache; when a linked federation aggregates, the aggregator passes the latest entries it
found in ``RoundContext.residuals``. Each entry becomes a candidate for the tensors it holds,
with the staleness discount b = log(γ)·rounds_stale, so the attention weights decide per
layer how much foreign knowledge to absorb, and older knowledge counts for less.

A residual is optional knowledge read from a shared cache: a tensor in it that the
federation does not hold, or with another shape, or non-finite, is skipped and counted
(``residual/skipped_tensors``) rather than failing the round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from worldlm.strategies.attention import AttentionAggregation, Offset, offset_from_update
from worldlm.strategies.base import (
    AggregateResult,
    EmptyUpdatesError,
    ResidualEntry,
    RoundContext,
    StrategyConfigError,
    Tensors,
    Update,
    check_updates,
    compute_dtype,
    is_learned,
)

__all__ = ["ResidualEntry", "ResidualMerge", "residual_bias"]

RESIDUAL_PREFIX = "residual:"
"""Source label prefix of residual candidates in attention metrics."""


def residual_bias(gamma: float, rounds_stale: int) -> float:
    """The logit bias of a residual ``rounds_stale`` rounds old: log(γ)·rounds_stale."""
    # 0·log(γ) is 0 even for γ = 1 (log 0 never happens: γ > 0 is enforced upstream).
    return math.log(gamma) * rounds_stale


class ResidualMerge:
    """Attention aggregation over the updates plus the residuals in the round context.

    Args:
        attention: the attention rule (ε, τ, sign).
        gamma: staleness discount γ in (0, 1]; 1 = no discount.
        sign: the sign residual candidates are scored with; None = the rule's sign. With
            the FedAtt sign +1 the farthest candidate weighs most, so a federation with
            unrelated data dominates; -1 scores residuals by similarity instead.
    """

    def __init__(
        self,
        attention: AttentionAggregation | None = None,
        gamma: float = 0.9,
        sign: int | None = None,
    ):
        if not 0.0 < gamma <= 1.0:
            raise StrategyConfigError(f"residual gamma must be in (0, 1], got {gamma}")
        if sign not in (None, 1, -1):
            raise StrategyConfigError(f"residual sign must be +1, -1 or unset, got {sign}")
        self.sign = sign
        self.attention = attention if attention is not None else AttentionAggregation()
        self.gamma = gamma

    def aggregate(
        self,
        current: Tensors,
        updates: Sequence[Update],
        context: RoundContext | None = None,
    ) -> AggregateResult:
        """Attention over the updates' candidates and ``context.residuals``.

        Info adds ``residual/alpha_total`` (α given to residuals, summed over residuals and
        averaged over the tensors they cover), ``residual/candidates`` and
        ``residual/skipped_tensors``.
        """
        check_updates(current, updates)
        live = [u for u in updates if u.weight > 0]
        if not live:
            raise EmptyUpdatesError("no update with positive weight for attention")
        residuals = context.residuals if context is not None else ()
        offsets = [offset_from_update(u) for u in live]
        skipped = 0
        residual_offsets: list[Offset] = []
        for entry in residuals:
            offset, entry_skipped = self.residual_offset(current, entry)
            skipped += entry_skipped
            if offset.diffs:
                residual_offsets.append(offset)
        result = self.attention.aggregate_offsets(current, offsets + residual_offsets)
        info = dict(result.info)
        info["residual/candidates"] = float(len(residual_offsets))
        info["residual/skipped_tensors"] = float(skipped)
        info["residual/alpha_total"] = _residual_share(info, residual_offsets)
        return AggregateResult(
            weights=result.weights, info=info, accepted=tuple(u.sender for u in live)
        )

    def residual_offset(self, current: Tensors, entry: ResidualEntry) -> tuple[Offset, int]:
        """One entry as a candidate over the tensors it validly holds; also the skip count."""
        if entry.rounds_stale < 0:
            raise StrategyConfigError(
                f"residual from {entry.federation!r}: rounds_stale {entry.rounds_stale} < 0"
            )
        diffs: dict[str, Tensor] = {}
        skipped = 0
        for name, w_k in entry.weights.items():
            cur = current.get(name)
            if cur is None or not is_learned(cur):
                continue  # not one of this federation's key layers: not a candidate there
            if w_k.shape != cur.shape or not bool(torch.isfinite(w_k).all()):
                skipped += 1
                continue
            dtype = compute_dtype(cur)
            diffs[name] = w_k.to(device=cur.device, dtype=dtype) - cur.to(dtype)
        bias = residual_bias(self.gamma, entry.rounds_stale)
        return Offset(RESIDUAL_PREFIX + entry.federation, bias, diffs, self.sign), skipped

    def state_dict(self) -> dict[str, Any]:
        """Stateless: the residuals arrive with each round."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""


def _residual_share(info: Mapping[str, float], residual_offsets: Sequence[Offset]) -> float:
    # Mean α of each residual over the tensors it covers, summed over residuals: roughly
    # "the fraction of the step that came from other federations".
    return sum(info.get(f"attention/alpha/{o.source}", 0.0) for o in residual_offsets)
