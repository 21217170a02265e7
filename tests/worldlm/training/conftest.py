"""Shared fixtures for the training tests: tiny models built from configs, never downloaded."""

from __future__ import annotations

import os

# Before transformers is imported anywhere: models are built from configs, and nothing may
# reach a model hub, even by accident.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Iterator

import pytest
import torch

from worldlm.training.model import ModelConfig


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded here, restoring the setting afterwards.

    On a 2-core machine shared with brokers and other jobs, torch's intra-op threads wait on
    each other: the 50-step test went from 3 s to 67 s at load 10. One thread costs ~1.5x
    when the machine is idle and degrades gracefully when it is not.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def micro_config() -> ModelConfig:
    """A model far below the `tiny` preset (~40k parameters) for tests of mechanics."""
    return ModelConfig(vocab_size=256, n_layer=4, d_model=32, n_head=2, d_ff=64, max_seq_len=64)
