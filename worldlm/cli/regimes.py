"""``worldlm experiment --study regimes``: the map of where joining a federation pays."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import typer

from worldlm.cli.stopping import Stop, run_until_signal


def run_regimes(
    *,
    out: Path,
    config: Path | None,
    seeds: int | None,
    quick: bool,
    processes: int | None,
    dp: bool,
) -> None:
    """Run the regime study's missing cells, then write its report (see docs/regimes.md)."""
    import asyncio

    from tqdm import tqdm

    from worldlm.lab.grid import default_processes
    from worldlm.lab.simulator import SimulationStopped
    from worldlm.lab.studies.regime_report import write
    from worldlm.lab.studies.regimes import QUICK_BUDGET, RegimeStudy

    study = RegimeStudy(seeds=seeds or 3)
    if quick:
        study = dataclasses.replace(
            study, tokens=(256, None), clients=(2,), budget=dict(QUICK_BUDGET), seeds=seeds or 2,
            misplaced=2,
        )  # fmt: skip
    if config is not None:
        study = dataclasses.replace(study, config=config)
    if not dp:
        study = dataclasses.replace(study, dp=None)
    command = (
        "worldlm experiment --study regimes"
        + (" --quick" if quick else "")
        + f" --seeds {study.seeds}"
        + (f" --config {config}" if config else "")
        + ("" if dp else " --no-dp")
    )
    jobs = study.jobs()

    async def main(stop: asyncio.Event) -> None:
        with tqdm(desc="cells", unit="cell", total=len(jobs)) as bar:

            def on_done(cell: object) -> None:
                bar.update()
                bar.set_postfix_str(f"{cell.setting}/{cell.method} s{cell.seed}")  # type: ignore[attr-defined]

            await asyncio.to_thread(
                study.run,
                out,
                processes=processes or default_processes(),
                should_stop=stop.is_set,
                on_done=on_done,
            )

    started = time.perf_counter()
    stop = Stop()
    try:
        run_until_signal(main, stop)
    except SimulationStopped:
        typer.echo(f"stopped; finished cells are kept in {out / 'cells'}", err=True)
        raise typer.Exit(stop.status) from None
    typer.echo(write(study, out, command=command, wall_s=time.perf_counter() - started))
