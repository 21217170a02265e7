"""Baselines on the same code: flat and hierarchical FedAvg, FedPer, local-only.

* flat FedAvg: one federation, every tensor averaged, no key layers;
* hierarchical FedAvg: the same strategy at every node of the tree (the topology is the
  config's business), every tensor averaged, no key layers;
* FedPer (Arivazhagan et al., 2019): the backbone averaged, the key layers never
  aggregated: the aggregator passes its own K through and each client keeps its own;
* local-only: no aggregation at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worldlm.strategies.base import (
    AggregateResult,
    RoundContext,
    Strategy,
    Tensors,
    Update,
    copy_weights,
)
from worldlm.strategies.fedavg import FedAvg
from worldlm.strategies.layered import Layered, NameSelector


class KeepCurrent:
    """Returns the current weights unchanged, whatever the updates; marks nothing applied.

    Used for FedPer's key layers and, on the whole model, as the local-only baseline.
    """

    def aggregate(
        self,
        current: Tensors,
        updates: Sequence[Update],
        context: RoundContext | None = None,
    ) -> AggregateResult:
        """A copy of ``current``, ``aggregated=False``; the updates are ignored."""
        return AggregateResult(
            weights=copy_weights(current),
            info={"kept/tensors": float(len(current))},
            aggregated=False,
        )

    def state_dict(self) -> dict[str, Any]:
        """Stateless."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""


def flat_fedavg() -> Strategy:
    """Flat FedAvg: one federation, everything averaged, no key layers."""
    return FedAvg()


def hierarchical_fedavg() -> Strategy:
    """Hierarchical FedAvg: FedAvg on all tensors at every level of the tree."""
    return FedAvg()


def fedper(key_names: NameSelector, backbone: Strategy | None = None) -> Strategy:
    """FedPer: the backbone averaged (or by ``backbone``), the key layers kept local."""
    return Layered(backbone if backbone is not None else FedAvg(), KeepCurrent(), key_names)


def local_only() -> Strategy:
    """Local-only: no aggregation at all."""
    return KeepCurrent()
