"""One federation's model as a standard Hugging Face directory: ``worldlm export``.

A federation's model is the run's base (``[run] init``, or the seed's) with the weights its
aggregator holds at the end: the root's shared part and the federation's own key part. Under
LoRA those weights are adapters; the export merges them into the base (``peft``'s
``merge_and_unload``: W + (alpha/rank)·B·A per adapted layer), so the directory is a plain
causal LM that ``transformers`` loads with ``AutoModelForCausalLM.from_pretrained`` and
generates from, with no ``peft`` and no WorldLM. The adapters themselves are written too, in
``peft``'s format (``adapter/``), for users who keep one base and swap adapters.

Merging changes float rounding (one matrix instead of a sum of two paths), so the exported
model's perplexity equals the run's to about 1e-5 relative, not bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import msgspec
import torch

from worldlm.config.hierarchy import Hierarchy
from worldlm.training.adapters import peft_config, peft_state
from worldlm.training.evaluate import evaluate
from worldlm.training.pretrained import hf_tokenizer
from worldlm.training.workbench import client_data, make_model

CARD = "worldlm-export.json"


def federation_model(
    hierarchy: Hierarchy, federation: str, weights: Mapping[str, torch.Tensor]
) -> torch.nn.Module:
    """The base with ``federation``'s weights: a plain model, or under LoRA a ``PeftModel``
    holding the adapters unmerged (``merge_and_unload()`` gives the plain model)."""
    run = hierarchy.run
    lora = hierarchy.federations[federation].policy.lora or run.lora
    if lora is None:
        model = make_model(run)
        _, unexpected = model.load_state_dict(dict(weights), strict=False)
        if unexpected:
            raise KeyError(f"weights do not fit the model: unexpected {unexpected}")
        return model
    from peft import get_peft_model, set_peft_model_state_dict

    base = make_model(msgspec.structs.replace(run, lora=None))
    adapted = get_peft_model(base, peft_config(lora))
    result = set_peft_model_state_dict(adapted, peft_state(weights))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise KeyError(f"adapters do not fit the model: unexpected {unexpected}")
    return adapted


def export(
    hierarchy: Hierarchy, federation: str, weights: Mapping[str, torch.Tensor], out: Path
) -> Path:
    """Write ``federation``'s model (base plus its weights, adapters merged) to ``out``,
    and under LoRA its adapters in ``peft``'s format to ``out/adapter``."""
    if federation not in hierarchy.federations:
        raise KeyError(f"unknown federation {federation!r}; known: {sorted(hierarchy.federations)}")
    out.mkdir(parents=True, exist_ok=True)
    model = federation_model(hierarchy, federation, weights)
    if hierarchy.run.lora is not None:
        model.save_pretrained(out / "adapter")  # type: ignore[operator]
        # Back to the base class, each adapter folded into the layer it adapts.
        model = model.merge_and_unload()  # type: ignore[operator]
    model.save_pretrained(out)  # type: ignore[operator]
    hf_tokenizer().save_pretrained(out)  # type: ignore[attr-defined]
    card = {
        "run": hierarchy.run.id,
        "federation": federation,
        "init": hierarchy.run.init,
        "lora": msgspec.to_builtins(hierarchy.federations[federation].policy.lora),
        "tensors": len(weights),
    }
    (out / CARD).write_text(json.dumps(card, indent=2))
    return out


def federation_perplexity(
    hierarchy: Hierarchy, federation: str, directory: Path
) -> dict[str, float]:
    """Validation perplexity of the exported model at ``directory``, loaded by plain
    ``transformers``, on each of ``federation``'s clients' validation text (the windows the
    run's clients score: the figures compare one to one)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    run = hierarchy.run
    return {
        cid: evaluate(
            model,
            client_data(run, hierarchy.clients[cid]).validation,
            seq_len=run.seq_len,
            batch_size=run.batch_size,
            max_batches=run.eval_batches,
        ).perplexity
        for cid in hierarchy.federations[federation].clients
    }
