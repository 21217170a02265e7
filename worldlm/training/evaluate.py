"""Evaluation: next-token loss and perplexity over fixed windows of a token stream.

Every model is scored on the same windows (`batches.sequential_windows`: non-overlapping,
from the start of the stream), so numbers are comparable across clients, rounds and baselines.
The loss is the mean over predicted tokens — not over batches, whose last one may be smaller —
and perplexity is its exponential.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worldlm.training.batches import sequential_windows


@dataclass(frozen=True)
class EvalResult:
    """Mean next-token cross-entropy (nats), its exponential, and how many tokens it covers."""

    loss: float
    perplexity: float
    tokens: int


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
) -> EvalResult:
    """Score `model` on `tokens` (1-D ids) with windows of `seq_len` predicted tokens.

    Runs in eval mode without gradients and restores the model's previous mode. `max_batches`
    caps the cost on long streams: the first `max_batches × batch_size` windows are used.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for batch in sequential_windows(tokens, seq_len, batch_size, max_batches):
            batch = batch.to(device, torch.long)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            logits = model(input_ids=inputs, use_cache=False).logits
            assert logits.shape[:2] == inputs.shape, (logits.shape, inputs.shape)
            loss_sum += F.cross_entropy(
                logits.flatten(0, 1).float(), targets.flatten(), reduction="sum"
            )
            count += targets.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no evaluation windows: max_batches must be positive")
    loss = float(loss_sum) / count
    # exp overflows past ~709 nats; an untrained model is nowhere near, a diverged one may be.
    perplexity = math.inf if loss >= 700 else math.exp(loss)
    return EvalResult(loss=loss, perplexity=perplexity, tokens=count)
