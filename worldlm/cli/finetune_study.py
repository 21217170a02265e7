"""``worldlm experiment --study finetune``: full fine-tuning vs LoRA from one base."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import typer

from worldlm.cli.stopping import run_cells


def run_finetune(
    *, out: Path, config: Path | None, seeds: int | None, processes: int | None, dp: bool
) -> None:
    """Make the base if OUT/base has none, run the missing cells, write OUT/report.md."""

    from worldlm.cli.options import load_config
    from worldlm.lab.grid import default_processes
    from worldlm.lab.studies.finetune import DEMO, FinetuneStudy, summary_table
    from worldlm.training.pretrained import PretrainConfig, pretrain, public_partitions

    tree = config or DEMO
    base = out / "base"
    if not (base / "config.json").exists():
        texts = public_partitions(load_config(tree, None))
        card = pretrain(base, texts, PretrainConfig())
        typer.echo(f"base: {base} ({', '.join(texts)}; val ppl {card['val_ppl_after']:.1f})")
    study = FinetuneStudy(
        out=out,
        base=base,
        config=tree,
        seeds=seeds or 3,
        dp_epsilon=8.0 if dp else None,
        processes=processes or default_processes(),
    )
    command = (
        f"worldlm experiment --study finetune --seeds {study.seeds}"
        + (f" --config {config}" if config else "")
        + ("" if dp else " --no-dp")
    )
    jobs = study.jobs()

    started = time.perf_counter()
    run_cells(study, len(jobs), out)
    summary = study.report(command)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    wall = time.perf_counter() - started
    text = (
        f"# Full fine-tuning vs LoRA from one base\n\n`{command}` ({when}, commit {commit}, "
        f"{wall / 60:.1f} min)\n\nEach client's test perplexity, mean ± 95% CI over "
        f"{study.seeds} seeds; learning rates {study.lrs}; LoRA {study.lora}.\n\n"
        + summary_table(summary, study.methods)
        + "\n"
    )
    (out / "report.md").write_text(text)
    typer.echo(text)
