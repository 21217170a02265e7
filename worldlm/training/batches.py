"""Batches of token windows from a 1-D token stream.

A client's data is one LongTensor of token ids: its documents encoded and concatenated (see
`worldlm.training.tokenizer.encode_documents`). A training batch is `batch_size` windows of
`seq_len + 1` tokens at random offsets — inputs are the first `seq_len`, targets the last
`seq_len` — drawn with an explicit `torch.Generator`, so a seed fixes every batch. Evaluation
reads fixed, non-overlapping windows from the start, so every model is scored on the same
tokens and each token is predicted once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def check_stream(tokens: torch.Tensor, seq_len: int) -> None:
    """Raise ValueError unless `tokens` is a 1-D integer tensor holding one full window."""
    if tokens.dim() != 1:
        raise ValueError(f"token stream must be 1-D, got shape {tuple(tokens.shape)}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"token stream must hold integer ids, got {tokens.dtype}")
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if tokens.numel() < seq_len + 1:
        raise ValueError(
            f"token stream of {tokens.numel()} tokens is shorter than one window "
            f"of seq_len + 1 = {seq_len + 1}"
        )


def sample_starts(
    num_tokens: int,
    seq_len: int,
    shape: tuple[int, ...],
    generator: torch.Generator,
) -> torch.Tensor:
    """Uniform random window offsets in [0, num_tokens - seq_len - 1], of the given shape.

    Drawing all of a round's offsets at once, as a (steps, batch_size) tensor, costs one
    generator call instead of one per step.
    """
    high = num_tokens - seq_len  # exclusive bound: the last window ends at the last token
    return torch.randint(0, high, shape, generator=generator, device=generator.device)


def gather_windows(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The windows ``tokens[s : s + seq_len + 1]`` for each offset in the 1-D `starts`.

    One vectorised gather, no Python loop over the batch. Returns (len(starts), seq_len + 1).
    """
    offsets = torch.arange(seq_len + 1, device=tokens.device)
    windows = tokens[starts.to(tokens.device).unsqueeze(1) + offsets]
    assert windows.shape == (starts.numel(), seq_len + 1)
    return windows


def sample_batch(
    tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> torch.Tensor:
    """One (batch_size, seq_len + 1) batch of random windows; the generator fixes which."""
    check_stream(tokens, seq_len)
    starts = sample_starts(tokens.numel(), seq_len, (batch_size,), generator)
    return gather_windows(tokens, starts, seq_len)


def num_windows(num_tokens: int, seq_len: int) -> int:
    """Number of fixed evaluation windows in a stream: consecutive windows share one token."""
    return max(0, (num_tokens - 1) // seq_len)


def sequential_windows(
    tokens: torch.Tensor,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
) -> Iterator[torch.Tensor]:
    """Fixed evaluation batches of shape (≤ batch_size, seq_len + 1), in stream order.

    Window i covers tokens [i·seq_len, (i+1)·seq_len], so consecutive windows overlap by one
    token (the last target of one is the first input of the next) and every token after the
    first is a target exactly once. A trailing partial window is dropped; the last batch may
    be smaller than `batch_size`.
    """
    check_stream(tokens, seq_len)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    total = num_windows(tokens.numel(), seq_len)
    if max_batches is not None:
        total = min(total, max_batches * batch_size)
    # A strided view: no copy until a batch is materialised by the model's embedding lookup.
    windows = tokens.unfold(0, seq_len + 1, seq_len)[:total]
    for first in range(0, total, batch_size):
        yield windows[first : first + batch_size]
