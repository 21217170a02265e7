"""Aggregation strategies: pure, synchronous, deterministic, on plain tensors.

A strategy turns one round's updates (deltas with sample counts, staleness and weights)
into new weights plus a few figures for metrics. Wrappers compose: ``StalenessPolicy`` and
``DifferentialPrivacy`` wrap any strategy, ``Layered`` routes the backbone and the key
layers to two strategies. ``make_strategy`` builds the composition from a ``StrategyPolicy``.
"""

from worldlm.strategies.attention import AttentionAggregation
from worldlm.strategies.base import (
    AggregateResult,
    Candidate,
    EmptyUpdatesError,
    InvalidUpdateError,
    NonFiniteError,
    Rejection,
    ResidualEntry,
    RoundContext,
    Strategy,
    StrategyConfigError,
    StrategyError,
    TensorMismatchError,
    Tensors,
    Update,
)
from worldlm.strategies.dp import DifferentialPrivacy
from worldlm.strategies.fedavg import FedAvg
from worldlm.strategies.keep import KeepCurrent
from worldlm.strategies.layered import Layered, UnroutedTensorError
from worldlm.strategies.outer import ServerOptimizer
from worldlm.strategies.policy import DPPolicy, StrategyPolicy, make_strategy
from worldlm.strategies.residual import ResidualMerge
from worldlm.strategies.staleness import StalenessPolicy, staleness_weight

__all__ = [
    "AggregateResult",
    "AttentionAggregation",
    "Candidate",
    "DPPolicy",
    "DifferentialPrivacy",
    "EmptyUpdatesError",
    "FedAvg",
    "InvalidUpdateError",
    "KeepCurrent",
    "Layered",
    "NonFiniteError",
    "Rejection",
    "ResidualEntry",
    "ResidualMerge",
    "RoundContext",
    "ServerOptimizer",
    "StalenessPolicy",
    "Strategy",
    "StrategyConfigError",
    "StrategyError",
    "StrategyPolicy",
    "TensorMismatchError",
    "Tensors",
    "UnroutedTensorError",
    "Update",
    "make_strategy",
    "staleness_weight",
]
