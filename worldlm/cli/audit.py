"""``worldlm audit``: check a run's exactly-once accounting from what it left on Kafka."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer


def audit(
    run: Annotated[str, typer.Argument(help="The run id.")],
    kafka: Annotated[str, typer.Option("--kafka", help="Kafka bootstrap address host:port.")],
    redis: Annotated[
        str | None,
        typer.Option("--redis", help="Redis URL: also show each round's barrier arrivals."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Hierarchy config (default: the run's up topics)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--json", help="Also write the table as JSON here.")
    ] = None,
) -> None:
    """Per federation and round: updates the children published (distinct ids on the up
    topic) against what the aggregator folded, refused, dropped as duplicates and
    dead-lettered; flags any update lost or folded twice (exit 1)."""
    from worldlm.recording import audit_run

    federations = None
    if config is not None:
        from worldlm.cli.participants import load_config

        federations = sorted(load_config(config, run).federations)
    table = asyncio.run(audit_run(kafka, run, federations=federations, redis=redis))
    if not table.rows and not table.unread:
        typer.echo(f"worldlm: no round ledger of run {run!r} on {kafka}", err=True)
        raise typer.Exit(2)
    typer.echo(table.render())
    if out is not None:
        out.write_text(json.dumps(asdict(table), indent=2) + "\n")
    if not table.ok:
        raise typer.Exit(1)
