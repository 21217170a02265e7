"""Outer (server) optimizers on the aggregated pseudo-gradient: FedAvgM and Nesterov.

The pseudo-gradient of a round is g = −(weighted mean delta) = w − FedAvg(w). The server
then takes one SGD step on it, with heavy-ball or Nesterov momentum (Hsu et al., 2019;
Reddi et al., 2021), using the same update rule as ``torch.optim.SGD``:

    m ← g                      on a tensor's first step,
    m ← β·m + g                afterwards,
    w ← w − lr·m               (heavy ball, "fedavgm"),
    w ← w − lr·(g + β·m)       (Nesterov).

With lr = 1 and β = 0 the step is w + mean delta, bit for bit what ``FedAvg`` returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from worldlm.strategies.base import (
    AggregateResult,
    RoundContext,
    StrategyConfigError,
    Tensors,
    Update,
    check_updates,
)
from worldlm.strategies.fedavg import weighted_mean_delta


class ServerOptimizer:
    """FedAvg followed by a server SGD step with momentum on the pseudo-gradient.

    Momentum buffers are kept per tensor name. A tensor that no update covers in a round
    is left unchanged and its buffer untouched: the round brought no information about it.

    Args:
        server_lr: the server learning rate (1 = FedAvg's step size).
        momentum: β in [0, 1).
        nesterov: Nesterov momentum instead of heavy ball.
    """

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9, nesterov: bool = False):
        if not server_lr > 0:
            raise StrategyConfigError(f"server_lr must be > 0, got {server_lr}")
        if not 0.0 <= momentum < 1.0:
            raise StrategyConfigError(f"momentum must be in [0, 1), got {momentum}")
        self.server_lr = server_lr
        self.momentum = momentum
        self.nesterov = nesterov
        self._buffers: dict[str, Tensor] = {}
        self._steps = 0

    def aggregate(
        self,
        current: Tensors,
        updates: Sequence[Update],
        context: RoundContext | None = None,
    ) -> AggregateResult:
        """One outer step on the weighted mean of ``updates``."""
        check_updates(current, updates)
        means = weighted_mean_delta(current, updates)
        weights: dict[str, Tensor] = {}
        grad_sq = 0.0
        for name, cur in current.items():
            mean = means.get(name)
            if mean is None:
                weights[name] = cur.detach().clone()
                continue
            grad = mean.neg()
            grad_sq += float(grad.double().pow(2).sum())
            buffer = self._buffers.get(name)
            if buffer is None:
                buffer = grad.clone()
            else:
                if buffer.shape != grad.shape:
                    raise StrategyConfigError(
                        f"momentum buffer for {name!r} has shape {tuple(buffer.shape)}, "
                        f"the model has {tuple(grad.shape)}"
                    )
                buffer = buffer.to(grad) * self.momentum + grad
            self._buffers[name] = buffer
            step = grad + buffer * self.momentum if self.nesterov else buffer
            weights[name] = (cur.to(grad.dtype) - step * self.server_lr).to(cur.dtype)
        self._steps += 1
        info = {
            "outer/pseudo_grad_norm": grad_sq**0.5,
            "outer/steps": float(self._steps),
            "outer/updates": float(len(updates)),
        }
        return AggregateResult(
            weights=weights, info=info, accepted=tuple(u.sender for u in updates)
        )

    def state_dict(self) -> dict[str, Any]:
        """Momentum buffers (cloned) and the step count."""
        return {
            "momentum_buffers": {n: b.clone() for n, b in self._buffers.items()},
            "steps": self._steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore buffers and step count from ``state_dict``'s output."""
        buffers = state.get("momentum_buffers", {})
        if not all(isinstance(b, torch.Tensor) for b in buffers.values()):
            raise StrategyConfigError("momentum_buffers must map names to tensors")
        self._buffers = {str(n): b.clone() for n, b in buffers.items()}
        self._steps = int(state.get("steps", 0))
