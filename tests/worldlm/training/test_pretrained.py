"""``worldlm pretrain``: a base from public text, written as a standard Hugging Face directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.worldlm.participants.helpers import raw_config
from tests.worldlm.training.bases import PUBLIC, make_base
from worldlm.config.hierarchy import parse
from worldlm.training.pretrained import CARD, public_partitions
from worldlm.training.tokenizer import load_tokenizer
from worldlm.training.workbench import Workbench, initial_weights


def test_a_base_is_a_plain_transformers_directory_that_learned_from_public_text(
    tmp_path: Path,
) -> None:
    base = make_base(tmp_path)
    card = json.loads((base / CARD).read_text())
    assert card["partitions"] == list(PUBLIC)
    assert card["val_ppl_after"] < card["val_ppl_before"]
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    text = "ls -l lists the files"
    assert tokenizer(text).input_ids == load_tokenizer().encode(text)
    out = model.generate(torch.tensor([tokenizer(text).input_ids]), max_new_tokens=4)
    assert out.shape == (1, len(tokenizer(text).input_ids) + 4)

    # A full fine-tuning run from it starts at its weights.
    raw = raw_config("pre", federations={"root": {}}, clients={"x": ("root", "lang-es")})
    raw["run"]["init"] = str(base)
    h = parse(raw)
    weights = initial_weights(h.run)
    assert all(torch.equal(weights[n], t) for n, t in model.state_dict().items() if n in weights)
    bench = Workbench(h.run, h.clients["x"], h.client_policy("x"))
    assert bench.evaluate(weights).perplexity < 4000  # an untrained tiny model scores ~4100


def test_public_text_is_what_no_client_holds() -> None:
    raw = raw_config(
        "pub",
        federations={"root": {}},
        clients={"x": ("root", "lang-es"), "y": ("root", "lang-fr")},
    )
    public = public_partitions(parse(raw))
    assert "lang-es" not in public and "lang-fr" not in public and "lang-en" in public
