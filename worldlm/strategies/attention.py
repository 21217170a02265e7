"""Attention aggregation of key layers, in the FedAtt form (Ji et al., 2019).

For each tensor ℓ, with the aggregator's current value w and candidates w_1..w_m:

    s_k = ‖w − w_k‖_F,    α = softmax_k(sign·s_k/τ + b_k),    w ← w − ε Σ_k α_k (w − w_k).

sign = +1 is the published rule (the farther candidate, the more it moves w); sign = −1
favours the nearer. b_k is a logit bias: log of the update's weight multiplier (so a
staleness discount lowers a candidate's share), or log(γ)·rounds_stale for residuals.
ε = 0 leaves w unchanged; candidates that all equal c move w to c when ε = 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from worldlm.strategies.base import (
    AggregateResult,
    Candidate,
    EmptyUpdatesError,
    Info,
    RoundContext,
    StrategyConfigError,
    TensorMismatchError,
    Tensors,
    Update,
    check_updates,
    compute_dtype,
    is_learned,
)


@dataclass(frozen=True, eq=False)
class Offset:
    """A candidate as offsets from the current weights: diffs[name] = w_k − w.

    Updates already are offsets (their deltas), so they never need full weights built.
    """

    source: str
    bias: float
    diffs: Tensors
    #: Overrides the rule's sign for this candidate (e.g. residuals scored by similarity).
    sign: float | None = None


def offset_from_update(update: Update) -> Offset:
    """An update as a candidate: w_k = w + Δ_k, bias log(weight)."""
    return Offset(update.sender, math.log(update.weight), update.delta)


def offset_from_candidate(current: Tensors, candidate: Candidate) -> Offset:
    """A full-weights candidate as offsets from ``current`` (for the tensors both hold)."""
    diffs: dict[str, Tensor] = {}
    for name, w_k in candidate.weights.items():
        cur = current.get(name)
        if cur is None or not is_learned(cur):
            continue
        if w_k.shape != cur.shape:
            raise TensorMismatchError(
                f"candidate {candidate.source!r}: tensor {name!r} has shape "
                f"{tuple(w_k.shape)}, expected {tuple(cur.shape)}"
            )
        dtype = compute_dtype(cur)
        diffs[name] = w_k.to(device=cur.device, dtype=dtype) - cur.to(dtype)
    return Offset(candidate.source, candidate.bias, diffs)


class AttentionAggregation:
    """Layer-wise attention over candidates (FedAtt). Stateless.

    Args:
        eps: step size ε ≥ 0 (1 = move all the way to the attention-weighted candidate mean).
        tau: temperature τ > 0 on the distances.
        sign: +1 (FedAtt: farther candidates weigh more) or −1 (nearer weigh more).
        per_tensor_info: also report α per tensor and candidate, not only averaged.
    """

    def __init__(
        self,
        eps: float = 1.0,
        tau: float = 1.0,
        sign: int = 1,
        per_tensor_info: bool = False,
    ):
        if not eps >= 0:
            raise StrategyConfigError(f"attention eps must be >= 0, got {eps}")
        if not tau > 0:
            raise StrategyConfigError(f"attention tau must be > 0, got {tau}")
        if sign not in (1, -1):
            raise StrategyConfigError(f"attention sign must be +1 or -1, got {sign}")
        self.eps = eps
        self.tau = tau
        self.sign = sign
        self.per_tensor_info = per_tensor_info

    def aggregate(
        self,
        current: Tensors,
        updates: Sequence[Update],
        context: RoundContext | None = None,
    ) -> AggregateResult:
        """Attention over the updates' candidates (w + Δ_k, bias log weight_k).

        Updates with weight 0 are not candidates. Sample counts are not used: attention
        weighs candidates by distance, as in FedAtt.
        """
        check_updates(current, updates)
        live = [u for u in updates if u.weight > 0]
        if not live:
            raise EmptyUpdatesError("no update with positive weight for attention")
        result = self.aggregate_offsets(current, [offset_from_update(u) for u in live])
        return AggregateResult(
            weights=result.weights, info=result.info, accepted=tuple(u.sender for u in live)
        )

    def aggregate_candidates(
        self, current: Tensors, candidates: Sequence[Candidate]
    ) -> AggregateResult:
        """Attention over explicit full-weights candidates."""
        return self.aggregate_offsets(
            current, [offset_from_candidate(current, c) for c in candidates]
        )

    def aggregate_offsets(self, current: Tensors, offsets: Sequence[Offset]) -> AggregateResult:
        """The attention rule per tensor, over the offsets that cover it.

        A tensor no offset covers (and any non-floating tensor) is copied unchanged.
        Info: ``attention/alpha/<source>`` is the source's α averaged over the tensors it
        was a candidate for; ``attention/entropy`` the mean entropy of α.
        """
        weights: dict[str, Tensor] = {}
        alpha_sum: dict[str, float] = {}
        alpha_count: dict[str, int] = {}
        info: Info = {}
        entropy_sum = 0.0
        tensors = 0
        for name, cur in current.items():
            covering = [o for o in offsets if name in o.diffs]
            if not covering or not is_learned(cur):
                weights[name] = cur.detach().clone()
                continue
            dtype = compute_dtype(cur)
            diffs = [o.diffs[name].to(device=cur.device, dtype=dtype) for o in covering]
            alpha = self.attention_weights(
                [float(torch.linalg.vector_norm(d.double())) for d in diffs],
                [o.bias for o in covering],
                [o.sign for o in covering],
            )
            # w − ε Σ α_k (w − w_k) = w + ε Σ α_k (w_k − w), with w_k − w the offsets.
            moved = torch.zeros_like(cur, dtype=dtype)
            for a, d in zip(alpha, diffs, strict=True):
                moved.add_(d, alpha=a)
            weights[name] = (cur.to(dtype) + moved * self.eps).to(cur.dtype)
            tensors += 1
            entropy_sum += -sum(a * math.log(a) for a in alpha if a > 0)
            for o, a in zip(covering, alpha, strict=True):
                alpha_sum[o.source] = alpha_sum.get(o.source, 0.0) + a
                alpha_count[o.source] = alpha_count.get(o.source, 0) + 1
                if self.per_tensor_info:
                    info[f"attention/alpha/{name}/{o.source}"] = a
        for source, total in alpha_sum.items():
            info[f"attention/alpha/{source}"] = total / alpha_count[source]
        info["attention/tensors"] = float(tensors)
        info["attention/candidates"] = float(len(offsets))
        info["attention/entropy"] = entropy_sum / tensors if tensors else 0.0
        return AggregateResult(weights=weights, info=info, accepted=())

    def attention_weights(
        self,
        distances: Sequence[float],
        biases: Sequence[float],
        signs: Sequence[float | None] | None = None,
    ) -> list[float]:
        """α = softmax_k(sign_k·s_k/τ + b_k), computed in float64 for stability.

        ``sign_k`` is the rule's sign unless ``signs`` overrides it for candidate k.
        """
        per = signs if signs is not None else [None] * len(distances)
        logits = torch.tensor(
            [
                (self.sign if g is None else g) * s / self.tau + b
                for s, b, g in zip(distances, biases, per, strict=True)
            ],
            dtype=torch.float64,
        )
        return [float(a) for a in torch.softmax(logits, dim=0)]

    def state_dict(self) -> dict[str, Any]:
        """Attention is stateless."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""
