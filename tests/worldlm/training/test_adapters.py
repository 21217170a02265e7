"""LoRA adapters on a frozen base: what trains, what travels, what the B/K split selects."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worldlm.participants.helpers import raw_config
from tests.worldlm.training.bases import LORA, make_base
from worldlm.config.hierarchy import Hierarchy, LoraConfig, parse
from worldlm.training.adapters import attach_lora, frozen_names, peft_state, trainable_names
from worldlm.training.model import ModelConfig, build_model, load_pretrained
from worldlm.training.workbench import Workbench, federation_key, initial_weights


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base(tmp_path_factory.mktemp("base"))


def tree(base: Path | None, lora: dict[str, object] | None = LORA) -> Hierarchy:
    raw = raw_config(
        "adapters",
        federations={"root": {}, "a": {"parent": "root"}},
        clients={"x": ("a", "lang-es"), "y": ("a", "lang-fr")},
        defaults={"lora": lora} if lora else {},
    )
    if base is not None:
        raw["run"]["init"] = str(base)
    return parse(raw)


def tiny() -> torch.nn.Module:
    return build_model(ModelConfig.from_preset("tiny", vocab_size=4096), seed=0)


def test_attaching_lora_freezes_the_base_and_starts_at_its_outputs() -> None:
    plain, adapted = tiny(), attach_lora(tiny(), LoraConfig(rank=4), seed=3)
    names = trainable_names(adapted)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "v_proj"}  # the default targets
    assert not frozen_names(adapted) & set(names)
    ids = torch.randint(0, 4096, (2, 16))
    with torch.no_grad():  # lora_B starts at zero: the adapted model is the base, exactly
        assert torch.equal(plain(input_ids=ids).logits, adapted(input_ids=ids).logits)


def test_the_same_seed_draws_the_same_adapters_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = attach_lora(tiny(), LoraConfig(rank=4), seed=7).state_dict()
    b = attach_lora(tiny(), LoraConfig(rank=4), seed=7).state_dict()
    c = attach_lora(tiny(), LoraConfig(rank=4), seed=8).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    lora_a = [n for n in a if ".lora_A." in n]
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in lora_a)


def test_a_lora_run_carries_and_trains_adapters_only_on_a_frozen_pretrained_base(
    base: Path,
) -> None:
    h = tree(base)
    weights = initial_weights(h.run)
    assert weights and all(".lora_" in n for n in weights)
    full = initial_weights(tree(base, lora=None).run)
    assert sum(w.numel() for w in weights.values()) < sum(w.numel() for w in full.values()) / 50

    bench = Workbench(h.run, h.clients["x"], h.client_policy("x"))
    before = {n: t.clone() for n, t in bench.model.state_dict().items() if ".lora_" not in n}
    result = bench.train(weights)
    assert result.delta.keys() == weights.keys()
    assert any(d.abs().sum() > 0 for d in result.delta.values())
    after = bench.model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)  # the base never moves
    # The base is the pretrained one, not the seed's: its weights are the directory's.
    pretrained = load_pretrained(base).state_dict()
    name = "model.layers.0.self_attn.q_proj"
    assert torch.equal(after[f"{name}.base_layer.weight"], pretrained[f"{name}.weight"])


def test_the_key_layers_are_the_adapters_of_the_last_blocks(base: Path) -> None:
    key = federation_key(tree(base), "a")
    assert key and all(".lora_" in n for n in key)
    assert {n.split(".")[2] for n in key} == {"2", "3"}  # the last ceil(0.3 * 4) blocks


def test_adapters_are_renamed_to_peft_s_file_format() -> None:
    name = "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    renamed = peft_state({name: torch.zeros(1)})
    assert list(renamed) == ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
