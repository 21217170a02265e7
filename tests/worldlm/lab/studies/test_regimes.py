"""The regime study: its populations hold what they declare, its figures pick the test at the
best validation round, crossovers are read off the map, and a tiny map runs end to end."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from worldlm.config.hierarchy import parse
from worldlm.lab.grid import CellResult, setting_raw
from worldlm.lab.report import MethodResult
from worldlm.lab.studies.regime_report import crossovers, write
from worldlm.lab.studies.regimes import (
    RecordDPCells,
    RegimeStudy,
    best_round_scores,
    point_name,
    population,
)
from worldlm.training.workbench import client_data

TINY = {"rounds": 1, "local_steps": 1, "eval_batches": 1, "seq_len": 16, "batch_size": 2}


def _hierarchy(clients: int, tokens: int | None, seed: int = 0):
    study = RegimeStudy()
    raw = setting_raw(study.config, seed, study.lr, study.budget)
    return parse(population(raw, clients, study.shards, tokens))


def test_a_population_gives_each_federation_n_clients_on_disjoint_capped_shards() -> None:
    h = _hierarchy(4, 1000)
    assert len(h.clients) == 12
    for fid in ("literature", "technical", "public"):
        members = [c for c in h.clients.values() if c.federation == fid]
        assert len(members) == 4
        assert len({c.partition for c in members}) == 1  # one domain per federation
        assert sorted(c.shard for c in members) == [0, 1, 2, 3]
        assert {c.shards for c in members} == {8}
    data = [client_data(h.run, c) for c in h.clients.values()]
    assert all(d.train.numel() == 1000 for d in data)
    # held-out text is the client's own and never capped
    assert all(d.validation.numel() > 1000 and d.test is not None for d in data)


def test_token_caps_are_nested_and_the_whole_shard_is_larger() -> None:
    small = client_data(_hierarchy(2, 500).run, _hierarchy(2, 500).clients["drama-1"])
    big_h = _hierarchy(2, 2000)
    big = client_data(big_h.run, big_h.clients["drama-1"])
    whole_h = _hierarchy(2, None)
    whole = client_data(whole_h.run, whole_h.clients["drama-1"])
    assert bool((big.train[:500] == small.train).all())  # a larger cap holds the smaller's text
    assert whole.train.numel() > 2000
    assert bool((whole.train[:2000] == big.train).all())
    assert bool((whole.validation == small.validation).all())


def test_shards_depend_on_the_seed() -> None:
    a, b = _hierarchy(2, 500, seed=0), _hierarchy(2, 500, seed=1)
    da, db = client_data(a.run, a.clients["docs-0"]), client_data(b.run, b.clients["docs-0"])
    assert not bool((da.train == db.train).all())


def _result(val: dict[str, list[tuple[int, float]]], test: dict[str, list[tuple[int, float]]]):
    return CellResult(MethodResult(val), MethodResult(val), test_curve=test)


def test_the_reported_figure_is_the_test_at_the_best_validation_round() -> None:
    val = {"a": [(0, 50.0), (1, 20.0), (2, 30.0)], "b": [(0, 40.0), (1, 35.0), (2, 30.0)]}
    test = {"a": [(0, 55.0), (1, 22.0), (2, 33.0)], "b": [(0, 44.0), (1, 36.0), (2, 31.0)]}
    scores = best_round_scores(_result(val, test))
    assert scores["a"] == (1, 2, 22.0, 33.0)  # overfit: best round 1 of 2
    assert scores["b"] == (2, 2, 31.0, 31.0)  # still improving: the final model


def _point(tokens: float, ratios: dict[str, float]) -> dict:
    methods = {m: {"vs_local": {"mean": r, "ci95": 0.0}} for m, r in ratios.items()}
    return {"tokens": tokens, "methods": methods}


def test_crossovers_interpolate_in_log_tokens_and_name_the_side() -> None:
    study = RegimeStudy(tokens=(1000, 4000, None), clients=(2,), methods=("worldlm", "fedavg"))
    points = {
        point_name(2, 1000): _point(1000, {"worldlm": 0.8, "fedavg": 1.2}),
        point_name(2, 4000): _point(4000, {"worldlm": 0.9, "fedavg": 1.3}),
        point_name(2, None): _point(16000, {"worldlm": 1.1, "fedavg": 1.4}),
    }
    found = crossovers(study, points)["2"]
    (crossing,) = found["worldlm"]["crossings"]
    assert crossing["pays_below"]
    assert crossing["tokens"] == round(math.exp((math.log(4000) + math.log(16000)) / 2))
    assert found["fedavg"] == {"crossings": [], "everywhere": "loses"}


def test_a_tiny_map_runs_end_to_end_and_its_report_has_every_section(tmp_path: Path) -> None:
    study = dataclasses.replace(
        RegimeStudy(),
        tokens=(64, None),
        clients=(2,),
        methods=("worldlm", "local"),
        misplaced=2,
        seeds=2,
        budget=TINY,
        dp=RecordDPCells(epsilon=8.0, methods=("worldlm",)),
    )
    done: list[str] = []
    study.run(tmp_path, processes=1, on_done=lambda cell: done.append(cell.method))
    assert len(done) == len(study.jobs()) == 2 * 2 * (3 + 1)  # 2 caps x 2 seeds x methods
    text = write(study, tmp_path, command="worldlm experiment --study regimes (test)")
    data = json.loads((tmp_path / "report.json").read_text())
    for t in (64, None):
        figures = data["points"][point_name(2, t)]["methods"]
        assert set(figures) == {"worldlm", "local", "worldlm_misplaced", "worldlm+rdp"}
        for f in figures.values():
            assert math.isfinite(f["early"]["mean"]) and f["early"]["n"] == 2
            # evaluated before each of the budget's 2 client rounds and on the final model
            assert f["last_round"] == 2 and 0 <= f["best_round"] <= 2
        assert figures["local"]["vs_local"]["mean"] == pytest.approx(1.0)
    cell = study.load(tmp_path, 2, 64, "worldlm", 0)
    # a test figure beside every validation figure, so the best round's can be reported
    assert {c: [r for r, _ in pts] for c, pts in cell.test_curve.items()} == {
        c: [r for r, _ in pts] for c, pts in cell.val.curve.items()
    }
    for t in (64, None):  # record-level DP at both ends: spent within the target
        private = data["points"][point_name(2, t)]["methods"]["worldlm+rdp"]
        assert 0 < private["epsilon"] <= 8.0
        assert math.isfinite(private["vs_no_dp"]["mean"])
    assert data["points"][point_name(2, 64)]["tokens"] == 64
    assert data["points"][point_name(2, None)]["tokens"] > 64
    headings = ("## 2 clients", "## Local-only passes", "## The misplaced", "## Record-level DP")
    for heading in headings:
        assert heading in text
    assert (tmp_path / "regimes.png").stat().st_size > 0
    assert (tmp_path / "curves.png").stat().st_size > 0
    done.clear()
    study.run(tmp_path, processes=1, on_done=lambda cell: done.append(cell.method))
    assert done == []  # every cell reused


def test_a_cap_beyond_the_nested_shards_takes_larger_shards_that_still_hold_the_text() -> None:
    study = RegimeStudy()
    assert study.shards_at(2, 65536) == 2 and study.shards_at(8, 65536) is None
    assert study.tokens_at(8)[-1] is None and study.tokens_at(2)[-1] == 65536
    assert study.dp_point(2, 65536) and study.dp_point(2, 512) and not study.dp_point(2, None)
    raw = setting_raw(study.config, 0, study.lr, study.budget)
    wide = parse(population(raw, 2, 2, 65536))
    narrow = parse(population(raw, 2, 8, None))
    for cid in ("drama-0", "speeches-1"):
        big = client_data(wide.run, wide.clients[cid])
        small = client_data(narrow.run, narrow.clients[cid])
        # a half partition: up to the cap, several times an eighth's whole shard
        assert 65536 >= big.train.numel() > 3 * small.train.numel()
