"""A small pretrained base for the fine-tuning tests: made once per directory, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worldlm.training.pretrained import PretrainConfig, pretrain

#: Public text for the tests' bases: partitions the fine-tuning tests' clients never hold.
PUBLIC = ("lang-en", "domain-docs")
#: A few steps: enough to move the base away from its initialisation, cheap on two cores.
QUICK = PretrainConfig(steps=12, batch_size=8, seq_len=32, eval_batches=2)

LORA: dict[str, Any] = {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}


def make_base(directory: Path) -> Path:
    """``directory`` holding a tiny base pretrained on ``PUBLIC`` (made if not yet there)."""
    if not (directory / "config.json").exists():
        pretrain(directory, PUBLIC, QUICK)
    return directory
