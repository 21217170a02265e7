"""The B/K split: backbone tensors to one strategy, key-layer tensors to another.

WorldLM's model is split by parameter name into the backbone B (shared worldwide, averaged)
and the key layers K (kept per federation, aggregated by attention). ``Layered`` routes each
tensor of the model, and of every update, to the strategy of its group, and returns the
union of the two results.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from torch import Tensor

from worldlm.strategies.base import (
    AggregateResult,
    RoundContext,
    Strategy,
    StrategyConfigError,
    StrategyError,
    TensorMismatchError,
    Tensors,
    Update,
    merge_rejections,
    merge_senders,
)

NameSelector = Collection[str] | Callable[[str], bool]
"""A set of tensor names, or a predicate on a name."""


def as_predicate(selector: NameSelector) -> Callable[[str], bool]:
    """A predicate from a set of names or a predicate."""
    if callable(selector):
        return selector
    names = frozenset(selector)
    return names.__contains__


class UnroutedTensorError(StrategyError):
    """A tensor matches neither group, or both."""


class Layered:
    """Routes backbone tensors to ``backbone`` and key-layer tensors to ``key``.

    Args:
        backbone: the strategy for B.
        key: the strategy for K.
        key_names: the key-layer names (a set, or a predicate).
        backbone_names: the backbone names; None = every name that is not a key layer.
            When given, a name in neither group, or in both, is an ``UnroutedTensorError``.

    Info keys are prefixed ``backbone/`` and ``key/``. A group with no tensors in the model
    is not called. State nests the two strategies' states.
    """

    def __init__(
        self,
        backbone: Strategy,
        key: Strategy,
        key_names: NameSelector,
        backbone_names: NameSelector | None = None,
    ):
        self.backbone = backbone
        self.key = key
        self._is_key = as_predicate(key_names)
        self._is_backbone = as_predicate(backbone_names) if backbone_names is not None else None

    def is_key(self, name: str) -> bool:
        """Whether ``name`` is routed to the key strategy; raises if routed nowhere or twice."""
        key = self._is_key(name)
        if self._is_backbone is None:
            return key
        backbone = self._is_backbone(name)
        if key == backbone:
            where = "both the backbone and the key layers" if key else "no group"
            raise UnroutedTensorError(f"tensor {name!r} is routed to {where}")
        return key

    def aggregate(
        self,
        current: Tensors,
        updates: Sequence[Update],
        context: RoundContext | None = None,
    ) -> AggregateResult:
        """Aggregate B and K separately and return the union."""
        routes = {name: self.is_key(name) for name in current}
        for update in updates:
            for name in update.delta:
                if name not in routes:
                    raise TensorMismatchError(
                        f"update from {update.sender!r}: tensor {name!r} is not in the model"
                    )
        weights: dict[str, Tensor] = {}
        info: dict[str, float] = {}
        results: list[AggregateResult] = []
        for prefix, strategy, want_key in (
            ("backbone", self.backbone, False),
            ("key", self.key, True),
        ):
            part = {n: t for n, t in current.items() if routes[n] == want_key}
            if not part:
                continue
            part_updates = [
                u.with_delta({n: d for n, d in u.delta.items() if routes[n] == want_key})
                for u in updates
            ]
            result = strategy.aggregate(part, part_updates, context)
            missing = part.keys() - result.weights.keys()
            if missing:
                raise StrategyConfigError(
                    f"{prefix} strategy returned no value for {sorted(missing)}"
                )
            weights.update(result.weights)
            info.update({f"{prefix}/{k}": v for k, v in result.info.items()})
            results.append(result)
        return AggregateResult(
            weights={name: weights[name] for name in current},
            info=info,
            accepted=merge_senders(*(r.accepted for r in results)),
            rejected=merge_rejections(*(r.rejected for r in results)),
            aggregated=any(r.aggregated for r in results),
        )

    def state_dict(self) -> dict[str, Any]:
        """Both strategies' states."""
        return {"backbone": self.backbone.state_dict(), "key": self.key.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore both strategies' states."""
        self.backbone.load_state_dict(state.get("backbone", {}))
        self.key.load_state_dict(state.get("key", {}))
