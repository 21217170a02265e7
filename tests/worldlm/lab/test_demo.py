"""The demo: its configs have the documented shape, and the smallest demo runs every method."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from worldlm.config.hierarchy import parse
from worldlm.lab.demo import DEMO_METHODS, demo_raw, run_demo
from worldlm.training.corpus import partitions

KNOWN = {p.name for p in partitions()}
DOMAINS = Path(__file__).parents[2] / "worldlm" / "configs" / "domains.toml"
#: The shipped hierarchies the demo compares: languages (default) and English domains.
CONFIGS = pytest.mark.parametrize("config", [None, DOMAINS], ids=["languages", "domains"])


@CONFIGS
def test_demo_config_has_three_levels_and_two_clients_per_federation(config: Path | None) -> None:
    h = parse(demo_raw("t", config=config), known_partitions=KNOWN)
    assert h.depth == 1 and len(h.root.children) >= 3
    for fid in h.root.children:
        assert len(h.federations[fid].clients) >= 2
    kinds = {p.name: p.axis for p in partitions()}
    axis = {kinds[cl.partition] for cl in h.clients.values()}
    assert axis == ({"domain"} if config else {"language"})


def test_unknown_demo_override_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown demo override"):
        demo_raw("t", {"learning": 1})


TINY = {
    "rounds": 1,
    "internal_rounds": 1,
    "local_steps": 2,
    "eval_batches": 1,
    "seq_len": 32,
    "batch_size": 4,
}


@CONFIGS
async def test_smallest_demo_runs_every_method_over_two_seeds(
    tmp_path: Path, config: Path | None
) -> None:
    outcome = await run_demo(tmp_path, run_id="demo-e2e", config=config, overrides=TINY, seeds=2)
    methods = outcome.report["methods"]
    assert list(methods) == list(DEMO_METHODS)
    clients = set(parse(demo_raw("t", config=config), known_partitions=KNOWN).clients)
    for figures in methods.values():
        assert set(figures["clients"]) == clients
        assert set(figures["seeds"]) == {"0", "1"}
        for seed in figures["seeds"].values():
            # per client, per round: the model before training and after the one round
            assert set(seed["curves"]) == clients
            assert all(len(points) == 2 for points in seed["curves"].values())
            assert all(math.isfinite(v) and v > 1 for v in seed["score"].values())
        assert figures["mean"]["ci95"] is not None and figures["mean"]["ci95"] >= 0
    assert set(outcome.report["ratios"]) == {f"{m}/worldlm" for m in DEMO_METHODS[1:]}
    assert json.loads((tmp_path / "report.json").read_text()) == outcome.report
    table = (tmp_path / "report.md").read_text()
    assert "| **mean** |" in table and "Seeds [0, 1]" in table
    assert (tmp_path / "perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
