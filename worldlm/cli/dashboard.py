"""``worldlm dashboard``: a live web dashboard of a run, from its Kafka topics and Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from worldlm import logs


def dashboard(
    kafka: Annotated[str, typer.Option("--kafka", help="Kafka bootstrap address host:port.")],
    redis: Annotated[str, typer.Option("--redis", help="Redis URL redis://host:port/db.")],
    run: Annotated[
        str | None,
        typer.Option(
            "--run", help="Run id to follow (default: the config's, or the only run on Kafka)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Hierarchy config (TOML): the tree, quorums, deadlines."),
    ] = None,
    port: Annotated[int, typer.Option("--port", help="HTTP port (0: any free port).")] = 8050,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0 in a container).")
    ] = "127.0.0.1",
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")] = (
        "info"
    ),
) -> None:
    """Serve a live dashboard of a run (a running one, or a finished one replayed from Kafka).

    Reads the run's metrics, event and dead-letter topics from offset 0 and polls Redis; never
    talks to participants. The page is at http://HOST:PORT/, Prometheus metrics at /metrics.
    """
    from worldlm.cli.options import load_config
    from worldlm.cli.stopping import Stop, run_until_signal
    from worldlm.dashboard import Dashboard
    from worldlm.dashboard.stream import discover_runs

    logs.configure(level=log_level)
    hierarchy = load_config(config, run) if config is not None else None

    async def main(stop: Stop) -> None:
        from brokers.kafka import KafkaSettings

        stop.complete()  # it serves until a signal: that is its normal end (status 0)

        run_id = run or (hierarchy.run.id if hierarchy is not None else None)
        while run_id is None and not stop.is_set():
            runs = await discover_runs(KafkaSettings(bootstrap=kafka))
            if len(runs) == 1:
                run_id = runs[0]
            elif runs:
                raise typer.BadParameter(
                    f"several runs on this Kafka: {', '.join(runs)}; pick one", param_hint="--run"
                )
            else:
                typer.echo("no run on this Kafka yet; waiting (or give --run)", err=True)
                await asyncio.sleep(2.0)
        if run_id is None:
            return
        async with Dashboard(
            kafka=kafka, redis=redis, run_id=run_id, hierarchy=hierarchy, host=host, port=port
        ) as board:
            typer.echo(f"dashboard of run {run_id}: {board.url}", err=True)
            await stop.wait()

    run_until_signal(main)
