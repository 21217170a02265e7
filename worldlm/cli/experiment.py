"""``worldlm experiment``: the comparison a reviewer would accept, over seeds and settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from worldlm.cli.options import single_threaded_torch
from worldlm.cli.stopping import Stop, run_until_signal


def logs_configure(level: str) -> None:
    from worldlm import logs

    logs.configure(level=level)


def experiment(
    study: Annotated[
        str,
        typer.Option(
            "--study",
            help="table: the paper's table (settings x methods x seeds x rates); "
            "regimes: where joining pays, mapped over tokens and clients per federation "
            "(docs/regimes.md); finetune: full fine-tuning vs LoRA (docs/finetune.md); "
            "worldwide: the demo tree over worldwide links (docs/worldwide.md).",
        ),
    ] = "table",
    config: Annotated[
        list[Path] | None,
        typer.Option(
            "--config", help="Data settings (repeatable); default: the shipped three.", exists=True
        ),
    ] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", min=1, help="Default 5; 3 quick.")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="A smoke-sized budget per cell (3 seeds).")
    ] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Each config's own budget instead of the standard.")
    ] = False,
    processes: Annotated[
        int | None,
        typer.Option("--processes", "-j", min=1, help="Cells at a time; default: one per core."),
    ] = None,
    methods: Annotated[
        str | None, typer.Option("--methods", help="Comma-separated (worldlm/lab/methods.py).")
    ] = None,
    lrs: Annotated[
        str, typer.Option("--lrs", help="Learning-rate grid, comma-separated.")
    ] = "0.001,0.003,0.01",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Reports and cells go here (out/experiment, out/regimes)."),
    ] = None,
    dp: Annotated[
        bool, typer.Option("--dp/--no-dp", help="DP at a population on the first setting.")
    ] = True,
    dp_epsilon: Annotated[float, typer.Option("--dp-epsilon", help="The epsilon target.")] = 8.0,
    dp_shards: Annotated[
        int, typer.Option("--dp-shards", min=2, help="Clients each client is split into.")
    ] = 6,
    dp_seeds: Annotated[
        int, typer.Option("--dp-seeds", min=1, help="Seeds of the DP study (at most --seeds).")
    ] = 3,
    log_level: Annotated[str, typer.Option("--log-level")] = "warning",
) -> None:
    """Run every method on every data setting over seeds and a learning-rate grid, on the
    simulator; resumable (cells already in OUT/cells are reused). Writes OUT/report.md,
    OUT/summary.json and per setting OUT/<setting>/report.{md,json} and perplexity.png."""
    if study not in ("table", "regimes", "finetune", "worldwide"):
        raise typer.BadParameter(
            "choose table, regimes, finetune or worldwide", param_hint="--study"
        )
    if study == "worldwide":  # policies on worldwide links, simulated time (docs/worldwide.md)
        from worldlm.cli.worldwide import run_worldwide

        logs_configure(log_level)
        single_threaded_torch()
        cfg = config[0] if config else None
        return run_worldwide(out=out or Path("out/worldwide"), config=cfg, seeds=seeds,
                             processes=processes)  # fmt: skip
    if study == "finetune":  # full fine-tuning vs LoRA from one base (docs/finetune.md)
        from worldlm.cli.finetune_study import run_finetune

        logs_configure(log_level)
        single_threaded_torch()
        cfg = config[0] if config else None
        return run_finetune(out=out or Path("out/finetune"), config=cfg, seeds=seeds,
                            processes=processes, dp=dp)  # fmt: skip
    if study == "regimes":
        from worldlm.cli.regimes import run_regimes

        if config is not None and len(config) > 1:
            raise typer.BadParameter("the regime study takes one tree", param_hint="--config")
        if full or methods:
            raise typer.BadParameter(
                "--full and --methods belong to the table", param_hint="--study"
            )
        logs_configure(log_level)
        single_threaded_torch()
        return run_regimes(
            out=out or Path("out/regimes"),
            config=config[0] if config else None,
            seeds=seeds,
            quick=quick,
            processes=processes,
            dp=dp,
        )
    out = out or Path("out/experiment")
    import asyncio

    from tqdm import tqdm

    from worldlm import logs
    from worldlm.core.stopping import Stopped
    from worldlm.lab.dp_study import DPStudy
    from worldlm.lab.experiment import (
        EXPERIMENT_METHODS,
        QUICK,
        STANDARD,
        Experiment,
        shipped_configs,
    )
    from worldlm.lab.grid import default_processes
    from worldlm.lab.methods import METHODS
    from worldlm.lab.summary import summary_markdown

    logs.configure(level=log_level)
    single_threaded_torch()
    chosen = tuple(m.strip() for m in methods.split(",")) if methods else EXPERIMENT_METHODS
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise typer.BadParameter(
            f"unknown {unknown}; known: {sorted(METHODS)}", param_hint="--methods"
        )
    configs = {p.stem: p for p in config} if config else shipped_configs()
    grid = tuple(float(x) for x in lrs.split(",") if x.strip())
    if quick and full:
        raise typer.BadParameter("choose one of --quick and --full", param_hint="--full")
    n_seeds = seeds or (3 if quick else 5)
    budget = QUICK if quick else None if full else STANDARD
    command = (
        "worldlm experiment"
        + (" --quick" if quick else " --full" if full else "")
        + f" --seeds {n_seeds}"
        + (f" --config {' --config '.join(str(c) for c in config)}" if config else "")
        + (f" --methods {methods}" if methods else "")
        + ("" if dp else " --no-dp")
        + (f" --dp-seeds {dp_seeds}" if dp and dp_seeds != 3 else "")
    )

    async def main(stop: asyncio.Event) -> dict:
        with tqdm(desc="cells", unit="cell") as bar:

            def on_cell(cell: object, cached: bool) -> None:
                bar.update()
                bar.set_postfix_str(
                    f"{cell.setting}/{cell.method} s{cell.seed} lr{cell.lr:g}"  # type: ignore[attr-defined]
                    + (" (cached)" if cached else "")
                )

            study = DPStudy(shards=dp_shards, epsilon=dp_epsilon, seeds=dp_seeds) if dp else None
            exp = Experiment(
                out,
                configs,
                chosen,
                n_seeds,
                grid,
                budget,
                on_cell=on_cell,
                should_stop=stop.is_set,
                dp=study,
                processes=processes or default_processes(),
                command=command,
            )
            bar.total = exp.cells()
            return await asyncio.to_thread(exp.run)

    import time

    started = time.perf_counter()
    stop = Stop()
    try:
        summary = run_until_signal(main, stop)
    except Stopped:
        typer.echo(f"stopped; finished cells are kept in {out / 'cells'}", err=True)
        raise typer.Exit(stop.status) from None
    # this invocation's wall time (cells a previous invocation left cost it nothing)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    summary["processes"] = processes or default_processes()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(summary_markdown(summary, command))
    typer.echo((out / "report.md").read_text())
