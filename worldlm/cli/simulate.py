"""``worldlm simulate``: a whole hierarchy in one process, no Kafka and no Redis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from worldlm import logs
from worldlm.cli.options import LogOpt, RunIdOpt, load_config


def simulate(
    config: Annotated[Path, typer.Argument(help="Hierarchy config (TOML).")],
    seed: Annotated[int | None, typer.Option("--seed", help="Override the config's seed.")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write metrics.jsonl (every report) and summary.json here."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Clients trained at once.")] = 2,
    target: Annotated[
        float | None,
        typer.Option(
            "--target",
            help="Report when each federation's clients reach this "
            "mean validation perplexity, in simulated time ([links], [clock]).",
        ),
    ] = None,
    run_id: RunIdOpt = None,
    log_level: LogOpt = "warning",
) -> None:
    """Run a hierarchy on the simulator: the same federation core, strategies and trainer as
    `worldlm run`, deterministic for a seed (bit-identical weights and metrics)."""
    import torch

    from worldlm.lab.progress import RoundProgress
    from worldlm.lab.simulator import Simulation

    logs.configure(level=log_level)
    torch.set_num_threads(1)  # one intra-op thread per training thread: no oversubscription
    hierarchy = load_config(config, run_id)
    if seed is not None:
        from dataclasses import replace

        hierarchy = replace(hierarchy, run=msgspec.structs.replace(hierarchy.run, seed=seed))
    with RoundProgress(hierarchy, desc="simulate") as progress:
        simulation = Simulation(hierarchy, on_report=progress.update, workers=workers)
        try:
            result = simulation.run()
        except KeyboardInterrupt:  # interrupted like `worldlm run`: 130 (SIGTERM kills: 143)
            raise typer.Exit(130) from None
    finals = result.final_ppl()
    for client, ppl in sorted(finals.items()):
        typer.echo(f"{client:>16}  final validation perplexity {ppl:9.2f}")
    overhead = 1 - simulation.train_s / result.wall_s if result.wall_s else 0.0
    typer.echo(
        f"done in {result.wall_s:.1f}s (training and evaluation {simulation.train_s:.1f}s, "
        f"simulator {overhead:.1%})"
    )
    from worldlm.lab.timeline import timeline

    clock = timeline(hierarchy, result.reports, target)
    if hierarchy.links.declared:
        for fid, rounds in clock.round_s.items():
            reached = clock.reached_s[fid]
            typer.echo(
                f"{fid:>16}  simulated round s: {', '.join(f'{x:.2f}' for x in rounds)}"
                + (f"; target {target:g} at {reached:.2f}s" if reached is not None else "")
                + (" never reached" if target is not None and reached is None else "")
            )
        typer.echo(f"simulated time to the end: {clock.end_s:.2f}s")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with (out / "metrics.jsonl").open("wb") as f:
            for report in result.reports:
                f.write(msgspec.json.encode(report) + b"\n")
        summary = {
            "run": hierarchy.run.id,
            "seed": hierarchy.run.seed,
            "final_val_ppl": finals,
            "wall_s": result.wall_s,
            "train_s": simulation.train_s,
            "simulated": clock.as_dict(),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        typer.echo(f"metrics: {out / 'metrics.jsonl'}  summary: {out / 'summary.json'}")
