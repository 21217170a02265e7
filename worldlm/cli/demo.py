"""``worldlm demo``: WorldLM against its baselines on the shipped hierarchy, over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from worldlm.cli.participants import single_threaded_torch
from worldlm.cli.stopping import Stop, run_until_signal


def demo(
    out: Annotated[Path, typer.Option("--out", help="Where to write the report.")] = Path(
        "out/demo"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="Fewer rounds and steps.")] = False,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds 0..N-1 per method.")] = 1,
    methods: Annotated[
        str,
        typer.Option("--methods", help="Comma-separated methods (worldlm/lab/methods.py)."),
    ] = ",".join(("worldlm", "worldlm_meankey", "fedper", "fedavg", "local")),
    live: Annotated[
        bool, typer.Option("--live", help="Run WorldLM on embedded Kafka and Redis.")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")] = (
        "warning"
    ),
    dashboard: Annotated[
        bool,
        typer.Option("--dashboard", help="Serve the live dashboard of the WorldLM run (--live)."),
    ] = False,
    dashboard_port: Annotated[
        int, typer.Option("--dashboard-port", help="The dashboard's HTTP port.")
    ] = 8050,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Another hierarchy to compare (e.g. worldlm/config/shipped/domains.toml).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Run WorldLM and its baselines on the same clients and budget; write a report.

    Three levels (root -> language-group federations -> two clients each), the tiny model,
    on the simulator (the same core, strategies and trainer as a live run). Writes
    OUT/report.md, OUT/report.json and OUT/perplexity.png. With --config, WorldLM runs that
    hierarchy and the baselines run on its clients.
    """
    import asyncio

    from worldlm import logs
    from worldlm.lab.demo import DemoOutcome, run_demo
    from worldlm.lab.methods import METHODS
    from worldlm.lab.simulator import SimulationStopped

    logs.configure(level=log_level)
    single_threaded_torch()
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise typer.BadParameter(
            f"unknown {unknown}; known: {sorted(METHODS)}", param_hint="--methods"
        )

    async def main(stop: asyncio.Event) -> DemoOutcome:
        return await run_demo(
            out,
            quick=quick,
            seeds=seeds,
            methods=chosen,
            live=live,
            dashboard_port=dashboard_port if dashboard else None,
            config=config,
            stop=stop,
        )

    stop = Stop()
    try:
        outcome = run_until_signal(main, stop)
    except SimulationStopped:
        typer.echo("stopped before the report was complete", err=True)
        raise typer.Exit(stop.status) from None
    typer.echo("")
    for figures in outcome.report["methods"].values():
        mean, half = figures["mean"]["mean"], figures["mean"]["ci95"]
        spread = f" ± {half:.1f}" if half is not None else ""
        typer.echo(f"{figures['label']:>24}: mean validation perplexity {mean:9.1f}{spread}")
    typer.echo(f"report: {out / 'report.md'}  plot: {out / 'perplexity.png'}")
