"""The demo: its baselines get the same clients and budget, and the report has its shape."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from brokers.embedded import Endpoints
from worldlm.config import parse
from worldlm.demo import QUICK, client_rounds, demo_raw, flat_fedavg, run_demo
from worldlm.report import MethodResult, federation_curves, write_report
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


@CONFIGS
def test_flat_fedavg_has_the_same_clients_data_and_token_budget(config: Path | None) -> None:
    raw = demo_raw("t", QUICK, config)
    worldlm = parse(raw, known_partitions=KNOWN)
    fedavg = parse(flat_fedavg(raw, client_rounds(worldlm)), known_partitions=KNOWN)
    assert list(fedavg.federations) == ["root"]
    assert {c: (cl.partition, cl.shard, cl.shards) for c, cl in fedavg.clients.items()} == {
        c: (cl.partition, cl.shard, cl.shards) for c, cl in worldlm.clients.items()
    }
    assert (
        client_rounds(fedavg)
        == client_rounds(worldlm)
        == QUICK["rounds"] * QUICK["internal_rounds"]
    )
    some_client = next(iter(worldlm.clients))
    assert fedavg.root.policy.local_steps == worldlm.client_policy(some_client).local_steps
    assert fedavg.root.policy.key == "fedavg" and fedavg.residual_links("root") == ()


def test_unknown_demo_override_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown demo override"):
        demo_raw("t", {"learning": 1})


def test_report_writes_table_json_of_the_documented_shape_and_plot(tmp_path: Path) -> None:
    results = {
        "worldlm": MethodResult(
            {"a": 10.0, "b": 20.0}, {"a": [(0, 50.0), (1, 10.0)], "b": [(0, 60.0), (1, 20.0)]}
        ),
        "fedavg": MethodResult(
            {"a": 30.0, "b": 40.0}, {"a": [(0, 50.0), (1, 30.0)], "b": [(0, 60.0), (1, 40.0)]}
        ),
        "local": MethodResult(
            {"a": 5.0, "b": 6.0}, {"a": [(0, 50.0), (1, 5.0)], "b": [(0, 60.0), (1, 6.0)]}
        ),
    }
    data = write_report(
        tmp_path,
        results,
        groups={"a": "f1", "b": "f1"},
        partitions={"a": "p", "b": "q"},
        rounds=1,
        wall_s=3.0,
        settings={"model": "tiny"},
    )
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(data))
    assert set(on_disk["methods"]) == {"worldlm", "fedavg", "local"}
    assert on_disk["methods"]["worldlm"]["mean_val_ppl"] == 15.0
    assert on_disk["methods"]["fedavg"]["val_ppl"] == {"a": 30.0, "b": 40.0}
    assert isinstance(on_disk["rounds"], int) and isinstance(on_disk["wall_s"], float)
    table = (tmp_path / "report.md").read_text()
    assert "| a | f1 | p | 10.0 | 30.0 | 5.0 |" in table and "2.33x" in table
    assert (tmp_path / "perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_federation_curve_is_the_mean_of_its_clients_per_round() -> None:
    r = MethodResult({}, {"a": [(0, 10.0), (1, 4.0)], "b": [(0, 20.0), (1, 6.0)], "c": [(0, 1.0)]})
    assert federation_curves(r, {"a": "x", "b": "x", "c": "y"}) == {
        "x": [(0, 15.0), (1, 5.0)],
        "y": [(0, 1.0)],
    }


@CONFIGS
async def test_smallest_demo_runs_all_three_methods_end_to_end(
    tmp_path: Path, servers: Endpoints, config: Path | None
) -> None:
    outcome = await run_demo(
        tmp_path,
        run_id=f"demo-e2e-{'domains' if config else 'languages'}",
        config=config,
        overrides={
            "rounds": 1,
            "internal_rounds": 1,
            "local_steps": 2,
            "eval_batches": 1,
            "seq_len": 32,
            "batch_size": 4,
        },
    )
    methods = outcome.report["methods"]
    clients = set(parse(demo_raw("t", config=config), known_partitions=KNOWN).clients)
    for name in ("worldlm", "fedavg", "local"):
        assert set(methods[name]["val_ppl"]) == clients
        assert all(math.isfinite(v) and v > 1 for v in methods[name]["val_ppl"].values())
    assert outcome.report["rounds"] == 1
    assert (tmp_path / "report.md").is_file() and (tmp_path / "perplexity.png").is_file()
