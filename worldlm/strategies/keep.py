"""The strategy that aggregates nothing, ``KeepCurrent``: what the baselines that keep a
part of the model local are built with.

The baseline *methods* (flat and hierarchical FedAvg, FedPer, local-only, ...) differ in the
tree and the policy, not in a strategy of their own: they are config transforms in
``worldlm/lab/methods.py``, built from the same factories as WorldLM. ``KeepCurrent`` is what a
policy's ``key = "local"`` (FedPer) or ``backbone = "local"`` builds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worldlm.strategies.base import (
    AggregateResult,
    RoundContext,
    Tensors,
    Update,
    copy_weights,
)


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
