"""``worldlm demo``: WorldLM against its baselines on the shipped hierarchy, over seeds."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from worldlm.cli.options import single_threaded_torch
from worldlm.cli.stopping import Stop, run_until_signal

if TYPE_CHECKING:
    from worldlm.config.hierarchy import Hierarchy
    from worldlm.lab.report import MethodResult


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
    from worldlm import logs
    from worldlm.core.stopping import Stopped
    from worldlm.lab.demo import DemoOutcome, run_demo
    from worldlm.lab.methods import METHODS

    logs.configure(level=log_level)
    single_threaded_torch()
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise typer.BadParameter(
            f"unknown {unknown}; known: {sorted(METHODS)}", param_hint="--methods"
        )

    async def main(stop: asyncio.Event) -> DemoOutcome:
        async def live_run(h: Hierarchy) -> MethodResult:
            return await run_live(
                h, dashboard_port=dashboard_port if dashboard else None, stop=stop
            )

        return await run_demo(
            out,
            quick=quick,
            seeds=seeds,
            methods=chosen,
            live=live_run if live or dashboard else None,
            config=config,
            stop=stop,
        )

    stop = Stop()
    try:
        outcome = run_until_signal(main, stop)
    except Stopped:
        typer.echo("stopped before the report was complete", err=True)
        raise typer.Exit(stop.status) from None
    typer.echo("")
    for figures in outcome.report["methods"].values():
        mean, half = figures["mean"]["mean"], figures["mean"]["ci95"]
        spread = f" ± {half:.1f}" if half is not None else ""
        typer.echo(f"{figures['label']:>24}: mean validation perplexity {mean:9.1f}{spread}")
    typer.echo(f"report: {out / 'report.md'}  plot: {out / 'perplexity.png'}")


async def run_live(
    h: Hierarchy, *, dashboard_port: int | None = None, stop: asyncio.Event | None = None
) -> MethodResult:
    """WorldLM itself on embedded Kafka and Redis (optionally with a live dashboard)."""
    from brokers.embedded import embedded_servers
    from worldlm.lab.progress import RoundProgress
    from worldlm.lab.report import MethodResult, curves_from_reports
    from worldlm.participants.node import Endpoints
    from worldlm.participants.runner import run_hierarchy

    async with embedded_servers() as servers, contextlib.AsyncExitStack() as stack:
        if dashboard_port is not None:
            from worldlm.dashboard import Dashboard

            board = Dashboard(
                kafka=servers.kafka,
                redis=servers.redis,
                run_id=h.run.id,
                hierarchy=h,
                port=dashboard_port,
            )
            await stack.enter_async_context(board)
            print(f"dashboard: {board.url} (run {h.run.id})", file=sys.stderr, flush=True)
        with RoundProgress(h, desc="worldlm (live)") as progress:
            result = await run_hierarchy(
                h, Endpoints(servers.kafka, servers.redis), on_report=progress.update, stop=stop
            )
    return MethodResult(curves_from_reports(result.reports), result.wall_s)
