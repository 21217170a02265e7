"""A federation's aggregation policy as a small typed value, and the factory that builds it.

``make_strategy`` composes, from the inside out:

    Layered(backbone, key)   the B/K split (only when key-layer names are given),
    DifferentialPrivacy      when the policy sets ``dp``,
    StalenessPolicy          always (with a = 0 and no bound it changes nothing).

The methods (WorldLM and its baselines) are config transforms in ``worldlm/lab/methods.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from worldlm.strategies.attention import AttentionAggregation
from worldlm.strategies.base import Strategy, StrategyConfigError
from worldlm.strategies.dp import DifferentialPrivacy
from worldlm.strategies.fedavg import FedAvg
from worldlm.strategies.keep import KeepCurrent
from worldlm.strategies.layered import Layered, NameSelector
from worldlm.strategies.outer import ServerOptimizer
from worldlm.strategies.residual import ResidualMerge
from worldlm.strategies.staleness import StalenessPolicy

BackboneMethod = Literal["fedavg", "fedavgm", "nesterov", "local"]
KeyMethod = Literal["attention", "mean", "fedavg", "local"]


@dataclass(frozen=True)
class DPPolicy:
    """Differential privacy on a federation's edge to its children (see ``dp.py``)."""

    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    sample_rate: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class StrategyPolicy:
    """How one federation aggregates. Defaults are the WorldLM algorithm.

    Attributes:
        backbone: B's strategy: FedAvg, server momentum, Nesterov, or local (none).
        server_lr: outer learning rate (1 with fedavg = plain FedAvg).
        momentum: outer momentum β for fedavgm and nesterov.
        key: K's strategy: attention (FedAtt); mean (K kept per federation, averaged inside it:
            WorldLM without attention); fedavg (no K: every tensor is backbone, as in
            hierarchical FedAvg); local (kept, never aggregated: FedPer).
        attention_eps, attention_tau, attention_sign: ε, τ and sign of the attention rule.
        residual_gamma: staleness discount γ of residual candidates; None = no residuals.
        residual_sign: sign residual candidates are scored with; None = attention_sign.
        staleness_exponent: a in the (1 + s)^−a discount of async updates.
        staleness_bound: largest accepted staleness; None = unbounded.
        dp: differential privacy, or None.
    """

    backbone: BackboneMethod = "fedavg"
    server_lr: float = 1.0
    momentum: float = 0.9
    key: KeyMethod = "attention"
    attention_eps: float = 1.0
    attention_tau: float = 1.0
    attention_sign: int = 1
    residual_gamma: float | None = 0.9
    residual_sign: int | None = None
    staleness_exponent: float = 0.5
    staleness_bound: int | None = None
    dp: DPPolicy | None = None

    def __post_init__(self) -> None:
        if self.backbone not in get_args(BackboneMethod):
            raise StrategyConfigError(
                f"backbone must be one of {get_args(BackboneMethod)}, got {self.backbone!r}"
            )
        if self.key not in get_args(KeyMethod):
            raise StrategyConfigError(f"key must be one of {get_args(KeyMethod)}, got {self.key!r}")

    def replace(self, **changes: Any) -> StrategyPolicy:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def make_backbone(policy: StrategyPolicy) -> Strategy:
    """B's strategy from the policy."""
    if policy.backbone == "local":
        return KeepCurrent()
    if policy.backbone == "fedavg":
        # A server lr other than 1 is an outer SGD step without momentum.
        if policy.server_lr == 1.0:
            return FedAvg()
        return ServerOptimizer(server_lr=policy.server_lr, momentum=0.0)
    return ServerOptimizer(
        server_lr=policy.server_lr,
        momentum=policy.momentum,
        nesterov=policy.backbone == "nesterov",
    )


def make_key(policy: StrategyPolicy) -> Strategy:
    """K's strategy from the policy."""
    if policy.key == "local":
        return KeepCurrent()
    if policy.key in ("fedavg", "mean"):
        return FedAvg()
    attention = AttentionAggregation(
        eps=policy.attention_eps, tau=policy.attention_tau, sign=policy.attention_sign
    )
    if policy.residual_gamma is None:
        return attention
    return ResidualMerge(attention, gamma=policy.residual_gamma, sign=policy.residual_sign)


def make_strategy(policy: StrategyPolicy, key_names: NameSelector | None = None) -> Strategy:
    """The composed strategy of ``policy``.

    ``key_names`` selects the key layers (a set of names or a predicate); None means the
    model has no K and every tensor goes to the backbone strategy (flat and hierarchical
    FedAvg).
    """
    core: Strategy = make_backbone(policy)
    if key_names is not None:
        core = Layered(core, make_key(policy), key_names)
    if policy.dp is not None:
        dp = policy.dp
        core = DifferentialPrivacy(
            core,
            clip_norm=dp.clip_norm,
            noise_multiplier=dp.noise_multiplier,
            delta=dp.delta,
            sample_rate=dp.sample_rate,
            seed=dp.seed,
        )
    return StalenessPolicy(core, exponent=policy.staleness_exponent, bound=policy.staleness_bound)
