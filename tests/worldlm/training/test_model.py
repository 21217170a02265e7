"""Model presets, construction from configs (both architectures, offline), parameter counts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from worldlm.training.model import (
    ARCHS,
    PRESETS,
    Arch,
    ModelConfig,
    build_model,
    count_parameters,
    estimate_parameters,
    load_pretrained,
)

VOCAB = 4096  # the shared tokenizer's size (worldlm.training.tokenizer.DEFAULT_VOCAB_SIZE)


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_preset_builds_offline_with_about_one_million_parameters(arch: str) -> None:
    model = build_model(ModelConfig.from_preset("tiny", vocab_size=VOCAB, arch=arch))
    assert 0.5e6 <= count_parameters(model) <= 1.5e6
    logits = model(input_ids=torch.zeros(2, 16, dtype=torch.long)).logits
    assert logits.shape == (2, 16, VOCAB)


@pytest.mark.parametrize(
    ("name", "target"),
    [("small", 5e6), ("20m", 20e6), ("75m", 75e6), ("160m", 160e6), ("420m", 420e6)],
)
def test_larger_presets_land_near_their_names_counted_on_the_meta_device(
    name: str, target: float
) -> None:
    config = ModelConfig.from_preset(name, vocab_size=VOCAB)
    model = build_model(config, device="meta")  # no memory: 420M parameters stay abstract
    assert next(model.parameters()).device.type == "meta"
    assert abs(count_parameters(model) - target) / target < 0.1
    assert count_parameters(model) == estimate_parameters(config)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_formula_matches_the_built_model(name: str, arch: str) -> None:
    config = ModelConfig.from_preset(name, vocab_size=1000, arch=arch)
    assert estimate_parameters(config) == count_parameters(build_model(config, device="meta"))


def test_tied_embeddings_are_counted_once() -> None:
    tied = build_model(ModelConfig.from_preset("tiny", vocab_size=VOCAB), device="meta")
    untied = build_model(
        ModelConfig.from_preset("tiny", vocab_size=VOCAB, tie_embeddings=False), device="meta"
    )
    assert "lm_head.weight" in tied.state_dict()
    assert count_parameters(untied) - count_parameters(tied) == VOCAB * 128


def test_same_seed_same_weights_and_global_rng_untouched(micro_config: ModelConfig) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(micro_config, seed=7).state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    b = build_model(micro_config, seed=7).state_dict()
    c = build_model(micro_config, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_gpt2_grouped_query_attention_and_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="gpt2"):
        ModelConfig(
            vocab_size=64, n_layer=1, d_model=32, n_head=4, d_ff=64, arch="gpt2", n_kv_head=2
        )
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(vocab_size=64, n_layer=1, d_model=30, n_head=4, d_ff=64)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.from_preset("huge", vocab_size=64)


def test_llama_grouped_query_attention_builds(micro_config: ModelConfig) -> None:
    config = replace(micro_config, n_head=4, n_kv_head=2)
    model = build_model(config)
    assert count_parameters(model) == estimate_parameters(config)


@pytest.mark.parametrize("arch", ARCHS)
def test_load_pretrained_reads_a_local_directory(
    tmp_path: Path, micro_config: ModelConfig, arch: Arch
) -> None:
    model = build_model(replace(micro_config, arch=arch), seed=3)
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert type(loaded) is type(model)
    expected = model.state_dict()
    assert all(torch.equal(t, expected[name]) for name, t in loaded.state_dict().items())


def test_load_pretrained_never_treats_a_missing_path_as_a_hub_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "meta-llama" / "Llama-2-7b")
