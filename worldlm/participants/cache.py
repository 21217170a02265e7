"""A federation's side of the residual-embedding cache (``brokers/residuals.py``), as its
aggregator's close uses it: read its links' latest K (an entry it cannot open is counted and
skipped, never fatal) and write its own, sealed to the federations that read it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch

from schemas.sealing import SealError

if TYPE_CHECKING:
    from worldlm.config.hierarchy import Hierarchy
    from worldlm.participants.node import Node


class ResidualCache:
    """The residual cache as federation ``federation`` reads and writes it."""

    def __init__(self, node: Node, hierarchy: Hierarchy, federation: str) -> None:
        self.node, self.hierarchy, self.id = node, hierarchy, federation

    async def read(
        self, others: Iterable[str]
    ) -> dict[str, tuple[int, Mapping[str, torch.Tensor]]]:
        """The latest entry of each of ``others`` that this federation can open."""
        node = self.node
        found: dict[str, tuple[int, Mapping[str, torch.Tensor]]] = {}
        for other in others:
            try:
                cached = await node.state.residuals.get(other, unsealer=node.unsealer)
            except SealError as exc:  # not sealed to us, tampered, or unsealed in a sealed run
                node.counters["residual_unreadable"] += 1
                node.log.warning(
                    "residual_unreadable", federation=other, reason=exc.reason, error=str(exc)
                )
                continue
            if cached is not None:
                found[other] = (cached.round, cached.tensors)
        return found

    async def write(self, round_: int, residual: Mapping[str, torch.Tensor]) -> None:
        """This federation's K after a close, sealed to the federations that read it."""
        readers = self.node.seal_to(self.id, *self.hierarchy.residual_readers(self.id))
        await self.node.state.residuals.put(self.id, round_, dict(residual), seal_to=readers)
