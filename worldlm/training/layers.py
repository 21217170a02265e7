"""The backbone / key-layer split (B and K) of a model's parameters, by name pattern.

WorldLM shares the backbone B worldwide and keeps the key layers K per federation. Which
tensors are K is decided by **fnmatch-style glob patterns** over `model.state_dict()` names,
matched case-sensitively with `fnmatch.fnmatchcase`: ``*`` matches any run of characters
(dots included), ``?`` one character, ``[...]`` a character class. So ``model.layers.3.*``
selects block 3 of a llama model (and not block 30: the dot after ``3`` must be there), and
``*.self_attn.*`` selects every attention projection. Globs rather than regexes because they
are what a user writes in a TOML file without escaping dots.

Tied weights: with tied embeddings the state dict holds one tensor under two names
(``model.embed_tokens.weight`` and ``lm_head.weight`` for llama, ``transformer.wte.weight`` and
``lm_head.weight`` for gpt2). Both names always land in the same group, and the tensor is
counted once. The first name in state-dict order is the *canonical* one; the others are
*aliases* (`LayerSplit.aliases`), which a transport may skip since loading either name sets the
shared tensor. Patterns that select only some names of a tied tensor are ambiguous and raise.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

#: Fraction of transformer blocks, counted from the top, that are key layers by default.
DEFAULT_KEY_FRACTION = 0.3

# (block prefix, final-norm prefix) per known architecture, as in Hugging Face names.
_LAYOUTS: tuple[tuple[str, str], ...] = (
    ("model.layers.", "model.norm."),  # llama, mistral, qwen2, ...
    ("transformer.h.", "transformer.ln_f."),  # gpt2
)


@dataclass(frozen=True)
class LayerSplit:
    """A partition of a model's state-dict names into backbone B and key layers K.

    `backbone` and `key` are disjoint, cover every state-dict name, and keep state-dict order.
    `aliases` maps each tied alias name to its canonical name (both are in the same group).
    `backbone_numel` and `key_numel` count scalars, each tied tensor once.
    """

    backbone: tuple[str, ...]
    key: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)
    backbone_numel: int = 0
    key_numel: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        """All names, backbone first."""
        return self.backbone + self.key

    def backbone_of(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The backbone entries of `state` (a state dict or a delta), without copying."""
        return {name: state[name] for name in self.backbone}

    def key_of(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The key-layer entries of `state` (a state dict or a delta), without copying."""
        return {name: state[name] for name in self.key}


def block_count(model: torch.nn.Module) -> int:
    """Number of transformer blocks of a Hugging Face causal LM (llama- or gpt2-style)."""
    config = getattr(model, "config", None)
    n_layer = getattr(config, "num_hidden_layers", None)
    if not isinstance(n_layer, int):
        raise ValueError(f"{type(model).__name__} has no config.num_hidden_layers")
    return n_layer


def num_key_blocks(n_layer: int, fraction: float = DEFAULT_KEY_FRACTION) -> int:
    """⌈fraction·n_layer⌉ blocks, at least one. Rounded first: 0.3·10 is 3.0000000000000004."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"key fraction must be in (0, 1], got {fraction}")
    return max(1, math.ceil(round(fraction * n_layer, 9)))


def default_key_patterns(
    model: torch.nn.Module, fraction: float = DEFAULT_KEY_FRACTION
) -> tuple[str, ...]:
    """The paper's default K: the last ⌈0.3·L⌉ transformer blocks and the final norm.

    Returns glob patterns, e.g. ``("model.layers.2.*", "model.layers.3.*", "model.norm.*")``
    for a 4-block llama model. Raises ValueError for an architecture whose names it does not
    know; pass patterns explicitly for those.
    """
    names = list(model.state_dict().keys())
    n_layer = block_count(model)
    for block_prefix, norm_prefix in _LAYOUTS:
        if any(n.startswith(block_prefix) for n in names) and any(
            n.startswith(norm_prefix) for n in names
        ):
            first = n_layer - num_key_blocks(n_layer, fraction)
            blocks = tuple(f"{block_prefix}{i}.*" for i in range(first, n_layer))
            return (*blocks, f"{norm_prefix}*")
    raise ValueError(
        f"no default key layers for {type(model).__name__}: its parameter names match none of "
        f"{[b for b, _ in _LAYOUTS]}; give key-layer patterns explicitly"
    )


def tie_groups(model: torch.nn.Module) -> list[list[str]]:
    """State-dict names grouped by the tensor object they hold, in state-dict order.

    Grouping by object identity (not storage pointer) also works on the meta device, where
    every tensor reports the same null data pointer.
    """
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """Each tied alias name of `model.state_dict()` mapped to its canonical (first) name."""
    return {alias: group[0] for group in tie_groups(model) for alias in group[1:]}


def split_parameters(model: torch.nn.Module, key_patterns: Iterable[str]) -> LayerSplit:
    """Partition `model.state_dict()` names into backbone B and key layers K.

    A name is K when it matches any of `key_patterns` (see the module docstring for the glob
    syntax); everything else is B. Every pattern must match at least one name, or this raises
    ValueError naming it: a typo must not silently share layers meant to stay local. An empty
    pattern list is allowed and puts everything in B (flat FedAvg, no key layers).
    """
    patterns = tuple(key_patterns)
    state = model.state_dict(keep_vars=True)
    names = list(state.keys())
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ValueError(
            f"key-layer patterns match no parameter: {unmatched}; names look like "
            f"{names[:3]} ... {names[-2:]} (fnmatch globs, e.g. 'model.layers.3.*')"
        )

    # Compiled once: fnmatch per (name, pattern) pair is slow on 400M-parameter name lists.
    matcher = re.compile("|".join(fnmatch.translate(p) for p in patterns)) if patterns else None
    is_key = {n: bool(matcher and matcher.match(n)) for n in names}

    key_names: set[str] = set()
    aliases: dict[str, str] = {}
    backbone_numel = key_numel = 0
    for group in tie_groups(model):
        flags = {is_key[n] for n in group}
        if len(flags) > 1:
            raise ValueError(
                f"tied names {group} share one tensor but the patterns select only "
                f"{[n for n in group if is_key[n]]}; select all of them or none"
            )
        canonical, *rest = group
        aliases.update(dict.fromkeys(rest, canonical))
        numel = state[canonical].numel()
        if flags.pop():
            key_names.update(group)
            key_numel += numel
        else:
            backbone_numel += numel

    return LayerSplit(
        backbone=tuple(n for n in names if n not in key_names),
        key=tuple(n for n in names if n in key_names),
        aliases=aliases,
        backbone_numel=backbone_numel,
        key_numel=key_numel,
    )


def default_split(model: torch.nn.Module, fraction: float = DEFAULT_KEY_FRACTION) -> LayerSplit:
    """`split_parameters` with `default_key_patterns`."""
    return split_parameters(model, default_key_patterns(model, fraction))


def describe(split: LayerSplit, patterns: Sequence[str] = ()) -> dict[str, object]:
    """A small dict for logs and the dashboard: sizes of B and K and the patterns used."""
    total = split.backbone_numel + split.key_numel
    return {
        "key_patterns": list(patterns),
        "backbone_tensors": len(split.backbone),
        "key_tensors": len(split.key),
        "backbone_params": split.backbone_numel,
        "key_params": split.key_numel,
        "key_fraction": split.key_numel / total if total else 0.0,
    }
