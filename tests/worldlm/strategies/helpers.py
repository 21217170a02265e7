"""Small tensors and updates for strategy tests."""

from __future__ import annotations

import torch
from torch import Tensor

from worldlm.strategies import Update


def model(seed: int = 0) -> dict[str, Tensor]:
    """A tiny model: two backbone tensors, two key-layer tensors, one integer buffer."""
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(6, 4, generator=g),
        "block0.weight": torch.randn(4, 4, generator=g),
        "block1.weight": torch.randn(4, 4, generator=g),
        "norm.weight": torch.randn(4, generator=g),
        "steps": torch.tensor(7),
    }


KEY_NAMES = frozenset({"block1.weight", "norm.weight"})


def update(
    sender: str, base: dict[str, Tensor], seed: int, num_samples: int = 10, **kwargs: object
) -> Update:
    """An update with a random delta on every floating tensor of ``base``."""
    g = torch.Generator().manual_seed(seed)
    delta = {
        name: torch.randn(t.shape, generator=g) for name, t in base.items() if t.is_floating_point()
    }
    return Update(sender=sender, delta=delta, num_samples=num_samples, **kwargs)  # type: ignore[arg-type]


def snapshot(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Deep copies, to check later that nothing was mutated."""
    return {name: t.clone() for name, t in tensors.items()}


def assert_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    """Same names and bit-identical values."""
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
