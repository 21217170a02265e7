"""The B/K split: complete, disjoint, tied weights once, the paper's default K, loud typos."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from worldlm.training.layers import (
    default_key_patterns,
    default_split,
    num_key_blocks,
    split_parameters,
    tied_aliases,
)
from worldlm.training.model import ARCHS, ModelConfig, build_model, count_parameters

LAYOUT = {
    "llama": ("model.layers.", "model.norm.", "model.embed_tokens.weight"),
    "gpt2": ("transformer.h.", "transformer.ln_f.", "transformer.wte.weight"),
}


def meta_model(arch: str, n_layer: int = 4, tie: bool = True) -> torch.nn.Module:
    config = ModelConfig.from_preset(
        "tiny", vocab_size=4096, arch=arch, n_layer=n_layer, tie_embeddings=tie
    )
    return build_model(config, device="meta")


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_split_covers_every_state_dict_name_exactly_once(arch: str, tie: bool) -> None:
    model = meta_model(arch, tie=tie)
    split = default_split(model)
    names = list(model.state_dict())
    assert not set(split.backbone) & set(split.key)
    assert sorted(split.names) == sorted(names)
    assert split.backbone_numel + split.key_numel == count_parameters(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_tied_embedding_and_lm_head_share_a_group_and_count_once(arch: str) -> None:
    model = meta_model(arch)
    embedding = LAYOUT[arch][2]
    assert tied_aliases(model) == {"lm_head.weight": embedding}
    split = default_split(model)
    assert {"lm_head.weight", embedding} <= set(split.backbone)
    counted = sum(p.numel() for n, p in model.state_dict().items() if n in split.backbone)
    assert split.backbone_numel == counted - model.state_dict()[embedding].numel()
    # Both names into K together is allowed: the tensor moves, still counted once.
    both = split_parameters(model, ["lm_head.*", embedding])
    assert {"lm_head.weight", embedding} <= set(both.key)
    assert both.key_numel == model.state_dict()[embedding].numel()


def test_selecting_only_one_name_of_a_tied_tensor_raises() -> None:
    with pytest.raises(ValueError, match="tied"):
        split_parameters(meta_model("llama"), ["lm_head.*"])


@pytest.mark.parametrize("n_layer", [1, 2, 3, 4, 6, 10, 12, 24])
@pytest.mark.parametrize("arch", ARCHS)
def test_default_key_layers_are_last_ceil_30_percent_blocks_and_final_norm(
    arch: str, n_layer: int
) -> None:
    block, norm, _ = LAYOUT[arch]
    model = meta_model(arch, n_layer=n_layer)
    expected_blocks = math.ceil(3 * n_layer / 10)  # integer arithmetic: no 0.3·10 rounding
    patterns = default_key_patterns(model)
    assert patterns == (
        *(f"{block}{i}.*" for i in range(n_layer - expected_blocks, n_layer)),
        f"{norm}*",
    )
    key = default_split(model).key
    blocks_in_key = {
        name.removeprefix(block).split(".")[0] for name in key if name.startswith(block)
    }
    assert blocks_in_key == {str(i) for i in range(n_layer - expected_blocks, n_layer)}
    assert any(name.startswith(norm) for name in key)
    assert all(name.startswith((block, norm)) for name in key)


def test_key_block_count_avoids_float_rounding_up() -> None:
    assert num_key_blocks(10) == 3  # 0.3 * 10 == 3.0000000000000004 in floats
    assert num_key_blocks(4) == 2
    assert num_key_blocks(1) == 1
    with pytest.raises(ValueError):
        num_key_blocks(4, fraction=0.0)


def test_block_pattern_does_not_match_blocks_with_longer_numbers() -> None:
    model = meta_model("llama", n_layer=12)
    split = split_parameters(model, ["model.layers.1.*"])
    assert split.key and all(name.startswith("model.layers.1.") for name in split.key)


def test_pattern_that_matches_nothing_raises_and_names_it() -> None:
    model = meta_model("llama")
    with pytest.raises(ValueError, match=r"model\.layer\.3\.\*"):
        split_parameters(model, ["model.norm.*", "model.layer.3.*"])  # typo: layer, not layers


def test_no_patterns_puts_everything_in_the_backbone() -> None:
    model = meta_model("gpt2")
    split = split_parameters(model, [])
    assert split.key == () and len(split.backbone) == len(model.state_dict())


def test_custom_patterns_select_attention_everywhere(micro_config: ModelConfig) -> None:
    model = build_model(replace(micro_config, n_layer=2))
    split = split_parameters(model, ["*.self_attn.*"])
    assert len(split.key) == 2 * 4  # q, k, v, o in each of 2 blocks
    state = model.state_dict()
    assert set(split.key_of(state)) == set(split.key)
    assert split.backbone_of(state)["model.norm.weight"] is state["model.norm.weight"]
