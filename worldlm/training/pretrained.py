"""A pretrained base made offline: ``worldlm pretrain``.

LLM federations today start from a public pretrained model and fine-tune it. Offline, with no
model hub, this module makes such a base from text a deployment treats as public — for the
shipped corpus, the partitions no client of a config holds — and writes it as a standard
Hugging Face directory (``config.json``, ``model.safetensors``, the tokenizer), which
``[run] init`` then points at. The base is trained centrally by the same trainer the clients
use, in rounds of ``TrainConfig.steps`` with the optimizer kept across them.

Nothing here is a federation: no client's text is read (`public_partitions` chooses only
partitions no client holds), so the base leaks no member's data.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from worldlm.config.hierarchy import Hierarchy
from worldlm.training.corpus import client_split, partitions
from worldlm.training.evaluate import evaluate
from worldlm.training.model import ModelConfig, build_model
from worldlm.training.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    TOKENIZER_PATH,
    encode_documents,
    load_tokenizer,
)
from worldlm.training.trainer import LocalTrainer, TrainConfig

#: Provenance written next to the weights: what text, how long, what it scored.
CARD = "worldlm-pretrain.json"


@dataclass(frozen=True)
class PretrainConfig:
    """The base's shape and its training: ``steps`` AdamW steps of ``batch_size`` windows of
    ``seq_len`` tokens over the public text, a 5% validation split held out of it."""

    model: str = "tiny"
    arch: Literal["llama", "gpt2"] = "llama"
    steps: int = 300
    lr: float = 3e-3
    batch_size: int = 16
    seq_len: int = 64
    seed: int = 0
    eval_batches: int = 8


def public_partitions(hierarchy: Hierarchy) -> list[str]:
    """The corpus partitions no client of ``hierarchy`` holds (the shipped corpus's public
    text for that deployment), in corpus order."""
    held = {c.partition for c in hierarchy.clients.values()}
    return [p.name for p in partitions() if p.name not in held]


def hf_tokenizer() -> object:
    """The shared tokenizer as a ``transformers`` fast tokenizer (saved with every base and
    export, so plain ``transformers`` can encode and decode for the model)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_PATH),
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        pad_token=PAD_TOKEN,
    )


def pretrain(out: Path, texts: Sequence[str], config: PretrainConfig) -> dict[str, object]:
    """Train a base on the partitions ``texts`` and write it to ``out``; returns its card
    (also written to ``out/worldlm-pretrain.json``)."""
    if not texts:
        raise ValueError("pretraining needs at least one public partition")
    tokenizer = load_tokenizer()
    train: list[torch.Tensor] = []
    validation: list[torch.Tensor] = []
    for name in texts:
        split = client_split(name, 0, 1, val_fraction=0.05, seed=config.seed)
        train.append(encode_documents(tokenizer, split.train))
        validation.append(encode_documents(tokenizer, split.validation))
    stream, held_out = torch.cat(train), torch.cat(validation)
    shape = ModelConfig.from_preset(
        config.model,
        vocab_size=tokenizer.vocab_size,
        arch=config.arch,
    )
    model = build_model(shape, seed=config.seed)
    trainer = LocalTrainer(
        model,
        TrainConfig(
            steps=config.steps,
            lr=config.lr,
            batch_size=config.batch_size,
            seq_len=config.seq_len,
            seed=config.seed,
        ),
    )

    def score() -> float:
        return evaluate(
            model,
            held_out,
            seq_len=config.seq_len,
            batch_size=config.batch_size,
            max_batches=config.eval_batches,
        ).perplexity

    before = score()
    weights = {n: t.detach().clone() for n, t in model.state_dict().items()}
    result = trainer.train(weights, stream)
    after = score()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    hf_tokenizer().save_pretrained(out)  # type: ignore[attr-defined]
    card: dict[str, object] = {
        "partitions": list(texts),
        "train_tokens": int(stream.numel()),
        "config": dataclasses.asdict(config),
        "train_loss": result.train_loss,
        "val_ppl_before": before,
        "val_ppl_after": after,
    }
    (out / CARD).write_text(json.dumps(card, indent=2))
    return card
