"""The fine-tuning study's grid: one base, full vs LoRA, every method, WorldLM under DP."""

from __future__ import annotations

import tomllib
from pathlib import Path

from worldlm.config.hierarchy import parse
from worldlm.lab.methods import method_configs
from worldlm.lab.studies.finetune import DEMO, LORA, FinetuneStudy, with_base, with_record_dp
from worldlm.training.corpus import partitions


def test_the_grid_runs_every_method_both_ways_and_worldlm_under_dp(tmp_path: Path) -> None:
    study = FinetuneStudy(out=tmp_path, base=tmp_path / "base", seeds=3)
    cells = [job.cell for job in study.jobs()]
    assert len(cells) == 2 * 4 * 3 + 2 * 3
    assert {c.setting for c in cells} == {"full", "lora", "full-dp", "lora-dp"}
    assert {c.lr for c in cells if c.setting.startswith("lora")} == {study.lrs["lora"]}


def test_every_cell_starts_from_the_base_and_lora_cells_train_adapters() -> None:
    raw = tomllib.loads(DEMO.read_text())
    known = {p.name for p in partitions()}
    for lora in (LORA, None):
        built = with_base(raw, "out/base", lora)
        for method in ("worldlm", "fedavg", "fedper", "local"):
            for h in method_configs(built, method, known_partitions=known):
                assert h.run.init == "out/base"
                assert (h.run.lora is not None) == (lora is not None)
    private = parse(with_record_dp(with_base(raw, "out/base", LORA), 8.0, 1e-5))
    assert all(f.policy.record_dp is not None for f in private.federations.values())
    assert "init" not in raw["run"]  # the config read is never changed
