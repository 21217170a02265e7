"""`worldlm experiment` end to end on a tiny grid: every cell has figures, the report has its
documented structure, learning rates are chosen on validation, and a rerun resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

from worldlm.lab.dp_study import DPStudy
from worldlm.lab.experiment import Cell, Experiment, shipped_configs
from worldlm.lab.summary import summary_markdown

TINY = {"rounds": 1, "local_steps": 2, "eval_batches": 1, "seq_len": 32, "batch_size": 4}


def test_a_tiny_grid_runs_end_to_end_and_a_rerun_reuses_every_cell(tmp_path: Path) -> None:
    seen: list[tuple[Cell, bool]] = []
    exp = Experiment(
        tmp_path,
        {"languages": shipped_configs()["languages"]},
        methods=("worldlm", "fedavg", "worldlm_misplaced"),
        seeds=2,
        lrs=(0.003, 0.01),
        budget=TINY,
        processes=2,  # cells in a process pool, as the CLI runs them
        on_cell=lambda cell, cached: seen.append((cell, cached)),
    )
    summary = exp.run()
    assert len(seen) == exp.cells() == 3 + 3 + 2  # 2 lrs + 1 more seed; misplaced: 1 + 1
    assert not any(cached for _, cached in seen)
    data = summary["settings"]["languages"]
    assert data["split"] == "test"
    assert set(data["methods"]) == {"worldlm", "fedavg", "worldlm_misplaced"}
    for method, figures in data["methods"].items():
        assert set(figures["seeds"]) == {"0", "1"}
        for seed in figures["seeds"].values():
            # every client: a validation curve per round, scored on its test text, once
            assert len(seed["curves"]) == 6
            assert all(len(pts) >= 2 for pts in seed["curves"].values())  # rounds + final
            assert set(seed["score"]) == set(seed["curves"]) == set(seed["final"])
            assert all(math.isfinite(v) for v in seed["score"].values())
            assert seed["score"] != {c: pts[-1][1] for c, pts in seed["curves"].items()}
        # the rate with the better validation score was chosen
        validation = data["lr"]["validation"][method]
        assert data["lr"]["chosen"][method] == float(min(validation, key=validation.__getitem__))
    assert data["lr"]["chosen"]["worldlm_misplaced"] == data["lr"]["chosen"]["worldlm"]
    assert "worldlm_misplaced/worldlm" in data["ratios"]
    assert set(data["bytes_per_update"]) == {"worldlm", "fedavg", "worldlm_misplaced"}
    assert all(b > 0 for b in data["bytes_per_update"].values())
    on_disk = json.loads((tmp_path / "languages" / "report.json").read_text())
    assert on_disk["lr"] == data["lr"]
    assert (tmp_path / "languages" / "perplexity.png").is_file()
    table = summary_markdown(summary, "worldlm experiment")
    assert "| FedAvg (flat) / WorldLM |" in table and "**test** perplexity" in table

    seen.clear()
    again = exp.run()
    assert len(seen) == exp.cells() and all(cached for _, cached in seen)
    assert again["settings"]["languages"]["methods"] == data["methods"]


def test_dp_at_a_population_reports_the_same_epsilon_target_for_every_method(
    tmp_path: Path,
) -> None:
    exp = Experiment(
        tmp_path,
        {"languages": shipped_configs()["languages"]},
        methods=("fedavg", "worldlm"),
        seeds=2,
        lrs=(0.003,),
        budget=TINY,
        dp=DPStudy(shards=2, epsilon=8.0, methods=("fedavg", "worldlm"), seeds=1),
    )
    # 2 methods x 2 seeds, then 2 methods x with/without DP x 1 seed (the study's own)
    assert exp.cells() == 4 + 4
    summary = exp.run()
    dp = summary["dp"]
    settings = dp["settings"]
    assert settings["clients"] == 12 and set(settings["members_per_federation"].values()) == {4}
    assert settings["clip_norm_C"] > 0 and settings["noise_multiplier"] > 0
    # Both methods spent their budget under the same target (within the accountant's rounding)
    spent = settings["epsilon_spent"]
    assert set(spent) == {"fedavg+dp", "worldlm+dp"}
    assert all(0 < e <= 8.0 + 1e-6 for e in spent.values())
    assert set(dp["methods"]) == {"fedavg", "fedavg+dp", "worldlm", "worldlm+dp"}
    for figures in dp["methods"].values():
        assert set(figures["seeds"]) == {"0"}
        assert len(figures["seeds"]["0"]["curves"]) == 12


def test_centralized_trains_one_model_on_the_union_for_the_same_total_budget() -> None:
    from worldlm.lab.centralized import train_centralized
    from worldlm.lab.experiment import setting_raw
    from worldlm.lab.methods import method_configs

    raw = setting_raw(shipped_configs()["languages"], 0, 0.01, TINY)
    (h,) = method_configs(raw, "centralized")
    assert len(h.clients) == 6 and list(h.federations) == ["root"]
    steps = []
    val, test, seconds = train_centralized(h)
    assert set(val) == set(test) == set(h.clients) and seconds > 0
    budget = h.run.rounds  # flat: one round per root round
    for curve in val.values():
        assert [r for r, _ in curve] == list(range(budget + 1))
        steps.append(curve[-1][1] < curve[0][1])
    assert all(steps)  # every client's text got better: the model saw all of it


def test_a_compressed_method_reports_the_bytes_its_clients_sent(tmp_path: Path) -> None:
    from worldlm.lab.grid import Job, run_cell

    config = shipped_configs()["languages"]
    plain = run_cell(Job(Cell("languages", "worldlm", 0, 0.01), config), TINY)
    int8 = run_cell(Job(Cell("languages", "worldlm_int8", 0, 0.01), config), TINY)
    # int8 with a float32 scale per block of 256: a quarter of float32, plus the scales
    assert 0 < int8.bytes_per_update < 0.27 * plain.bytes_per_update
    assert all(math.isfinite(p) for pts in int8.test.curve.values() for _, p in pts)
