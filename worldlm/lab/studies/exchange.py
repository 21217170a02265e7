"""Bytes per exchange, adapters against the whole model: what one client update and one
federation submission put on the wire (every record: manifest and chunks, float32, as
``worldlm.strategies.compression.update_bytes`` encodes them) under a run's config.

Byte counts depend on names and shapes only (no entropy coding), so any delta of the right
shapes measures them; the full-model figure is the same run without adapters.
"""

from __future__ import annotations

import msgspec
import torch

from worldlm.config.hierarchy import Hierarchy
from worldlm.strategies.compression import CompressionConfig, update_bytes
from worldlm.training.workbench import federation_key, initial_weights


def exchange_bytes(h: Hierarchy, federation: str) -> dict[str, int]:
    """Bytes of a client update to ``federation`` and of ``federation``'s submission to its
    parent (B only), for the run's trainable set and for the whole model."""
    out: dict[str, int] = {}
    runs = {"": h.run, "full_": msgspec.structs.replace(h.run, lora=None)}
    for prefix, run in runs.items():
        weights = initial_weights(run)
        delta = {n: torch.zeros_like(t) for n, t in weights.items() if t.is_floating_point()}
        key = federation_key(h, federation) if run.lora is not None else _full_key(h, federation)
        out[f"{prefix}client_update"] = update_bytes(delta, CompressionConfig())
        submission = {n: t for n, t in delta.items() if n not in key}
        out[f"{prefix}submission"] = update_bytes(submission, CompressionConfig())
    return out


def _full_key(h: Hierarchy, federation: str) -> frozenset[str]:
    from dataclasses import replace

    full = replace(h, run=msgspec.structs.replace(h.run, lora=None))
    return federation_key(full, federation)
