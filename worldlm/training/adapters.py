"""LoRA adapters on a frozen base, through Hugging Face ``peft``.

With a ``lora`` policy the trainable parameters of a model are its adapters only: ``peft``
injects a pair of low-rank matrices (``lora_A``, ``lora_B``) next to each targeted linear
layer and freezes every base weight. The model keeps its Hugging Face names, so an adapter is
named after the layer it adapts (``model.layers.3.self_attn.q_proj.lora_A.default.weight``):
the B/K split's glob patterns (``model.layers.3.*``) select adapters as they selected layers,
and everything downstream of the split (strategies, codecs, checkpoints, the residual cache)
sees a smaller name → tensor mapping and nothing else.

What travels and what is checkpointed is the *trainable* state (`trainable_names`); the frozen
base is what every participant loads from ``[run] init`` (or builds from the seed), so it never
moves. `peft_state` renames adapters to ``peft``'s own file format (the adapter name dropped),
so a federation's adapters can be saved as a standard ``adapter_model.safetensors``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # peft is imported where adapters are made: the trainer never needs it
    from peft import LoraConfig as PeftLoraConfig

    from worldlm.config.schema import LoraConfig

#: peft's name for the one adapter a WorldLM model carries.
ADAPTER = "default"


def peft_config(lora: LoraConfig) -> PeftLoraConfig:
    """``peft``'s config for a federation's LoRA policy (no bias, no task head)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        target_modules=list(lora.targets),
        lora_dropout=lora.dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_lora(model: torch.nn.Module, lora: LoraConfig, *, seed: int) -> torch.nn.Module:
    """``model`` with LoRA adapters injected in place and every base weight frozen.

    ``lora_A`` is drawn from ``seed`` by a generator of its own (peft's Kaiming-uniform rule),
    ``lora_B`` starts at zero, so the adapted model starts at the base's outputs exactly. A
    target that names no module of the model raises ValueError (from ``peft``).
    """
    from peft import inject_adapter_in_model

    with torch.random.fork_rng(devices=[]):  # peft's own draws leave the global RNG as it was
        adapted = inject_adapter_in_model(peft_config(lora), model, adapter_name=ADAPTER)
    # peft draws lora_A from the global RNG, which other threads of a live process share,
    # with torch.nn.init, which transformers' loading turns into no-ops while it runs (in
    # any thread): drawn again here with peft's rule from a generator of our own and plain
    # torch.rand, so that every process gets the same adapters for a seed.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            parameter.requires_grad_(".lora_" in name)
            if ".lora_A." in name:  # kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), ...)
                bound = 1 / math.sqrt(parameter.shape[1])
                drawn = torch.rand(parameter.shape, generator=generator) * 2 * bound - bound
                parameter.copy_(drawn)
            elif ".lora_B." in name:
                parameter.zero_()
    return adapted


def frozen_names(model: torch.nn.Module) -> frozenset[str]:
    """State-dict names of the parameters that do not train (the base, under LoRA)."""
    return frozenset(
        n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad
    )


def trainable_names(model: torch.nn.Module) -> tuple[str, ...]:
    """State-dict names of the trainable parameters, in state-dict order: every weight for
    full fine-tuning, the adapters under LoRA."""
    frozen = frozen_names(model)
    return tuple(n for n in model.state_dict() if n not in frozen)


def adapter_count(model: torch.nn.Module) -> int:
    """Trainable scalars of ``model`` (tied tensors once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def peft_state(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapter weights renamed the way ``peft`` saves them (``base_model.model.`` prefix, no
    adapter name): what ``PeftModel.from_pretrained`` and ``set_peft_model_state_dict`` read."""
    return {
        "base_model.model." + name.replace(f".{ADAPTER}.", "."): tensor
        for name, tensor in weights.items()
    }
