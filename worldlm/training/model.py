"""Model configuration, size presets and construction.

Models are built from a config object, never downloaded: the project trains from scratch, and a
user who has a pretrained checkpoint on disk loads it with `load_pretrained`, which never
contacts a model hub. Two architectures are supported, both plain Hugging Face classes so that
checkpoints and parameter names are the ones everyone knows:

- ``llama`` (default): `LlamaForCausalLM` — RMSNorm, RoPE, SwiGLU MLP, no biases;
- ``gpt2``: `GPT2LMHeadModel` — LayerNorm, learned positions, GELU MLP, biases.

The vocabulary size is an argument, not a preset field: it comes from the shared tokenizer
(`worldlm.training.tokenizer.load_tokenizer().vocab_size`), which this module does not import.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

Arch = Literal["llama", "gpt2"]
ARCHS: tuple[Arch, ...] = ("llama", "gpt2")

#: Vocabulary size the presets are sized for: the shared tokenizer's (see tokenizer.py).
PRESET_VOCAB_SIZE = 4096


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a decoder-only transformer language model.

    `n_kv_head` defaults to `n_head` (plain multi-head attention); a smaller value gives
    grouped-query attention (llama only). `d_ff` is the hidden width of the MLP: for llama it
    feeds three matrices (SwiGLU), for gpt2 two, so the same shape has fewer parameters as gpt2.
    `dropout` applies to attention and residual paths; 0 keeps local training deterministic.
    """

    vocab_size: int
    n_layer: int
    d_model: int
    n_head: int
    d_ff: int
    max_seq_len: int = 256
    arch: Arch = "llama"
    n_kv_head: int | None = None
    tie_embeddings: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for field in ("vocab_size", "n_layer", "d_model", "n_head", "d_ff", "max_seq_len"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")
        if self.d_model % self.n_head != 0:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.n_head % self.kv_heads != 0:
            raise ValueError(f"n_head {self.n_head} is not divisible by n_kv_head {self.kv_heads}")
        if self.arch == "gpt2" and self.kv_heads != self.n_head:
            raise ValueError("gpt2 has no grouped-query attention: leave n_kv_head unset")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (equal to `n_head` unless grouped-query attention)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @classmethod
    def from_preset(cls, name: str, *, vocab_size: int, **overrides: object) -> ModelConfig:
        """The preset `name` (see `PRESETS`) for a tokenizer of `vocab_size` tokens.

        Any field can be overridden, e.g. ``ModelConfig.from_preset("tiny", vocab_size=4096,
        arch="gpt2", max_seq_len=512)``.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], vocab_size=vocab_size, **overrides)  # type: ignore[arg-type]


# Every preset is sized for PRESET_VOCAB_SIZE, the shared tokenizer's 4096 ids: its name is the
# parameter count a user of this project gets. Head dimension 32 (tiny) or 64; d_ff ≈ 2–2.7 ×
# d_model, a multiple of 64 (llama's SwiGLU keeps ~8/3). The vocab_size stored here is replaced
# by `from_preset`; with a larger vocabulary the embedding, and the count, grow.
PRESETS: dict[str, ModelConfig] = {
    # 1.18M: tests and the demo. Almost half of it is the (tied) embedding.
    "tiny": ModelConfig(vocab_size=PRESET_VOCAB_SIZE, n_layer=4, d_model=128, n_head=4, d_ff=256),
    # 4.98M: a few minutes per client on a laptop CPU.
    "small": ModelConfig(vocab_size=PRESET_VOCAB_SIZE, n_layer=6, d_model=256, n_head=4, d_ff=512),
    # 19.3M: the largest preset that is still sensible on a CPU.
    "20m": ModelConfig(
        vocab_size=PRESET_VOCAB_SIZE, n_layer=10, d_model=384, n_head=6, d_ff=1024, max_seq_len=512
    ),
    # The paper's sizes, for GPUs: 73.9M, 159.7M, 418.8M.
    "75m": ModelConfig(
        vocab_size=PRESET_VOCAB_SIZE,
        n_layer=10,
        d_model=768,
        n_head=12,
        d_ff=2048,
        max_seq_len=1024,
    ),
    "160m": ModelConfig(
        vocab_size=PRESET_VOCAB_SIZE,
        n_layer=16,
        d_model=896,
        n_head=14,
        d_ff=2432,
        max_seq_len=1024,
    ),
    "420m": ModelConfig(
        vocab_size=PRESET_VOCAB_SIZE,
        n_layer=26,
        d_model=1152,
        n_head=18,
        d_ff=3072,
        max_seq_len=1024,
    ),
}


def hf_config(config: ModelConfig) -> LlamaConfig | GPT2Config:
    """The Hugging Face config object for `config` (no weights, no download)."""
    if config.arch == "llama":
        return LlamaConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.d_model,
            intermediate_size=config.d_ff,
            num_hidden_layers=config.n_layer,
            num_attention_heads=config.n_head,
            num_key_value_heads=config.kv_heads,
            max_position_embeddings=config.max_seq_len,
            tie_word_embeddings=config.tie_embeddings,
            attention_dropout=config.dropout,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_seq_len,
        n_embd=config.d_model,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.d_ff,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        tie_word_embeddings=config.tie_embeddings,
        # GPT-2's defaults point at token 50256, outside a small vocabulary.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def build_model(
    config: ModelConfig, *, seed: int = 0, device: torch.device | str | None = None
) -> PreTrainedModel:
    """A freshly initialised model for `config`: the same `seed` gives the same weights.

    The global torch RNG is left as it was (initialisation runs under `fork_rng`). With
    ``device="meta"`` no memory is allocated: use it to count the parameters of big presets.
    """
    hf = hf_config(config)
    model_cls: type[PreTrainedModel] = (
        LlamaForCausalLM if config.arch == "llama" else GPT2LMHeadModel
    )
    target = torch.device(device) if device is not None else torch.device("cpu")
    if target.type == "meta":
        with torch.device("meta"):
            return model_cls(hf)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: CUDA's RNG is not ours to reseed
        model = model_cls(hf)
    # Built on the CPU so that a seed gives the same weights whatever the target device.
    torch.nn.Module.to(model, target)  # in place; PreTrainedModel.to's wrapper confuses mypy
    return model


def load_pretrained(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """Load a causal LM from a local directory written by `save_pretrained`.

    Never contacts a model hub (``local_files_only=True``); a missing directory is an error
    here rather than a hub lookup of a name that happens to look like a path. Only an explicit
    ``hub:<id>`` asks a hub (where one is reachable, and ``HF_HUB_OFFLINE`` is not set).
    """
    if str(path).startswith("hub:"):
        hub: PreTrainedModel = AutoModelForCausalLM.from_pretrained(str(path)[4:], dtype=dtype)
        return hub
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"no pretrained model directory at {directory}")
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, dtype=dtype
    )
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable scalars, counting tied weights (embedding = lm_head) once.

    `Module.parameters()` already yields a shared Parameter once; this works on the meta device.
    """
    return sum(p.numel() for p in model.parameters())


def estimate_parameters(config: ModelConfig) -> int:
    """Parameter count of `config` without building it, by formula (mirrors `count_parameters`)."""
    d, f, L, V = config.d_model, config.d_ff, config.n_layer, config.vocab_size
    head_dim = d // config.n_head
    lm_head = 0 if config.tie_embeddings else V * d
    if config.arch == "llama":
        attention = 2 * d * d + 2 * d * head_dim * config.kv_heads  # q, o; k, v
        block = attention + 3 * d * f + 2 * d  # SwiGLU: gate, up, down; two RMSNorms
        return V * d + L * block + d + lm_head
    attention = 4 * d * d + 4 * d  # fused qkv + output projection, with biases
    block = attention + 2 * d * f + f + d + 4 * d  # fc + proj with biases; two LayerNorms
    positions = config.max_seq_len * d
    return V * d + positions + L * block + 2 * d + lm_head
