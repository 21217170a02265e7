"""``worldlm experiment --study worldwide``: the shipped tree over worldwide links."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from worldlm.cli.stopping import run_cells


def run_worldwide(
    *, out: Path, config: Path | None, seeds: int | None, processes: int | None
) -> None:
    """Run the missing cells, then write OUT/report.md and OUT/summary.json."""

    from worldlm.lab.grid import default_processes
    from worldlm.lab.studies.worldwide import DEMO, WorldwideStudy, calibrate

    study = WorldwideStudy(
        out=out,
        config=config or DEMO,
        seeds=seeds or 3,
        processes=processes or default_processes(),
    )
    command = f"worldlm experiment --study worldwide --seeds {study.seeds}" + (
        f" --config {config}" if config else ""
    )
    jobs = study.jobs()

    started = time.perf_counter()
    run_cells(study, len(jobs), out)
    wall = time.perf_counter() - started
    summary = study.report()
    summary["measured_clock"] = calibrate(study.config, study.budget)
    summary["command"] = command
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"# The shipped tree over worldwide links\n\n`{command}` ({when}, commit {commit}, "
        f"{wall / 60:.1f} min of cells)\n\n" + report_markdown(summary) + "\n"
    )
    (out / "report.md").write_text(text)
    typer.echo(text)


def _cell(x: dict[str, Any], unit: str = "") -> str:
    if x["mean"] is None:
        return "—"
    half = f" ± {x['ci95']:.1f}" if x["ci95"] is not None else ""
    return f"{x['mean']:.1f}{half}{unit}"


def _ratio(x: dict[str, Any]) -> str:
    if x["mean"] is None:
        return "—"
    half = f" ± {x['ci95']:.2f}" if x["ci95"] is not None else ""
    return f"{x['mean']:.2f}{half}×"


def report_markdown(summary: dict[str, Any]) -> str:
    """Markdown: the tree's time to target and final perplexity per setting, then each
    federation's time to its own target."""
    from worldlm.lab.studies.worldwide import CLOCK, PROFILE

    settings: dict[str, Any] = summary["settings"]
    parts = list(next(iter(settings.values()))["parts"])
    targets = summary["targets"]
    n = max(r["parts"]["tree"]["final_ppl"]["n"] for r in settings.values())
    lines = [
        f"Links ([links]): {json.dumps(PROFILE)}. Declared compute ([clock]): "
        f"{json.dumps(CLOCK)}; measured now: "
        + json.dumps({k: round(v, 3) for k, v in summary["measured_clock"].items()})
        + ".",
        "",
        f"Mean ± 95% CI over {n} seeds (t interval); times are simulated seconds. Target "
        "of a seed: 1.1 x the final perplexity of the fp32 cell of that seed (tree: "
        + ", ".join(f"{t:.0f}" for t in targets["tree"])
        + "); ratios are paired by seed.",
        "",
        "| setting | tree: time to target (s) | reached | vs fp32 (paired) | "
        "tree: final perplexity | final vs fp32 (paired) | run length (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, row in settings.items():
        tree = row["parts"]["tree"]
        lines.append(
            f"| {s} | {_cell(tree['time_to_target_s'])} | {tree['reached']}/{n} | "
            f"{_ratio(tree['vs_fp32'])} | {_cell(tree['final_ppl'])} | "
            f"{_ratio(tree['final_vs_fp32'])} | {_cell(row['end_s'])} |"
        )
    feds = [p for p in parts if p != "tree"]
    lines += [
        "",
        "Each federation's clients: time to their own target (s) [seeds reached] / final "
        "perplexity (the target per seed: 1.1 x the federation's final figure under fp32).",
        "",
        "| setting | " + " | ".join(feds) + " |",
        "|---|" + "---|" * len(feds),
    ]
    for s, row in settings.items():
        cells = [
            f"{_cell(row['parts'][p]['time_to_target_s'])} [{row['parts'][p]['reached']}] / "
            f"{_cell(row['parts'][p]['final_ppl'])}"
            for p in feds
        ]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Share of the run each federation spends between submitting to the root and the "
        "root's next close (the least it waits for the root's model):",
        "",
        "| setting | " + " | ".join(feds) + " |",
        "|---|" + "---|" * len(feds),
    ]
    for s, row in settings.items():
        shares = [row["waiting"][f]["mean"] for f in feds]
        lines.append(f"| {s} | " + " | ".join(f"{x:.0%}" for x in shares) + " |")
    return "\n".join(lines)
