"""The worldwide study runs every setting on the profile and reports, per part of the tree,
when the target was reached and the final perplexity; its configs say what they claim."""

from __future__ import annotations

import tomllib
from pathlib import Path

from worldlm.cli.worldwide import report_markdown
from worldlm.config.hierarchy import parse
from worldlm.lab.studies.worldwide import (
    CLOCK,
    DEMO,
    PROFILE,
    SETTINGS,
    WorldwideStudy,
    with_setting,
)
from worldlm.training.corpus import partitions

SMOKE = {"rounds": 2, "local_steps": 1, "eval_batches": 1, "seq_len": 32, "batch_size": 4}


def test_each_setting_changes_only_the_roots_edge_on_the_stated_profile() -> None:
    raw = tomllib.loads(DEMO.read_text())
    known = {p.name for p in partitions()}
    built = {s: parse(with_setting(raw, s), known_partitions=known) for s in SETTINGS}
    for h in built.values():
        assert h.links.edge("es-0").bandwidth_mbit == 1000
        assert h.links.edge("east-asian").bandwidth_mbit == PROFILE["east-asian"]["bandwidth_mbit"]
        assert h.links.edge("latin").latency_ms == 150
        assert h.links.clock.step_s == CLOCK["step_s"]
    root = {s: h.federations["root"].policy for s, h in built.items()}
    assert root["fp32"].compression.codec == "none"
    assert [root[s].compression.codec for s in ("bf16", "int8", "topk")] == ["bf16", "int8", "topk"]
    assert root["async"].schedule.mode == "async"
    assert built["async"].run.rounds == built["fp32"].run.rounds * 3 // 2
    assert built["int8"].federations["latin"].policy.compression.codec == "none"  # clients fp32


def test_a_smoke_sized_study_reports_every_setting(tmp_path: Path) -> None:
    study = WorldwideStudy(out=tmp_path, seeds=2, budget=SMOKE, processes=1)
    study.run()
    summary = study.report()
    assert set(summary["settings"]) == set(SETTINGS)
    fp32 = summary["settings"]["fp32"]["parts"]["tree"]
    assert fp32["reached"] == 2  # the target is 1.1x fp32's own final figure
    slow = {s: r["end_s"]["mean"] for s, r in summary["settings"].items()}
    assert slow["int8"] < slow["fp32"]  # a quarter of the bytes up the slow edges
    summary["measured_clock"] = {"step_s": 0.1, "eval_s": 0.1, "aggregate_s": 0.01}
    text = report_markdown(summary)
    assert "| async |" in text and "east-asian" in text
