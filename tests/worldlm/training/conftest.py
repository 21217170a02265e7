"""Shared fixtures for the training tests: tiny models built from configs, never downloaded."""

from __future__ import annotations

import os

# Before transformers is imported anywhere: models are built from configs, and nothing may
# reach a model hub, even by accident.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

from worldlm.training.model import ModelConfig


@pytest.fixture
def micro_config() -> ModelConfig:
    """A model far below the `tiny` preset (~40k parameters) for tests of mechanics."""
    return ModelConfig(vocab_size=256, n_layer=4, d_model=32, n_head=2, d_ff=64, max_seq_len=64)
