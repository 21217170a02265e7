"""``worldlm export``: one federation's model as a directory plain ``transformers`` loads, at
the run's perplexity for that federation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.worldlm.participants.helpers import raw_config
from tests.worldlm.training.bases import LORA, make_base
from worldlm.config.hierarchy import Hierarchy, parse
from worldlm.lab.simulator import simulate
from worldlm.training.export import CARD, export, federation_perplexity


def lora_tree(base: Path, run_id: str) -> Hierarchy:
    raw = raw_config(
        run_id,
        federations={"root": {}, "a": {"parent": "root", "lora": {"alpha": 16}}, "b": {
            "parent": "root"}},
        clients={"x": ("a", "lang-es"), "y": ("a", "lang-fr"), "z": ("b", "lang-pl")},
        defaults={"lora": LORA},
    )  # fmt: skip
    raw["run"]["init"] = str(base)
    return parse(raw)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_an_exported_federation_loads_in_plain_transformers_at_the_runs_perplexity(
    tmp_path: Path, run_id: str, lora: bool
) -> None:
    h = lora_tree(make_base(tmp_path / "base"), run_id)
    if not lora:
        raw = raw_config(run_id, federations={"root": {}}, clients={"x": ("root", "lang-es")})
        raw["run"]["init"] = str(tmp_path / "base")
        h = parse(raw)
    fed = "a" if lora else "root"
    result, sim = simulate(h)
    out = export(h, fed, sim.weights(fed), tmp_path / "export")

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert not any("lora" in n for n in model.state_dict())  # merged: a plain causal LM
    assert json.loads((out / CARD).read_text())["federation"] == fed
    assert (out / "adapter" / "adapter_config.json").exists() == lora

    run_figures = result.final_ppl()
    exported = federation_perplexity(h, fed, out)
    assert exported.keys() == set(h.federations[fed].clients)
    for client, ppl in exported.items():
        # Merging W + s·BA rounds differently from the two paths: equal to 1e-5, not bitwise.
        assert math.isclose(ppl, run_figures[client], rel_tol=1e-5), (client, ppl)

    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = torch.tensor([tokenizer("La página de manual").input_ids])
    generated = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 5)
    assert isinstance(tokenizer.decode(generated[0]), str)
