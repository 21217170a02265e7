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
        typer.Option(
            "--config",
            help="The run's config: its federations, and only its participants' updates to "
            "their own parents count as published (default: the run's up topics, any sender).",
        ),
    ] = None,
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys",
            help="The run's key directory (public keys suffice): only updates whose signature "
            "verifies under it count as published. Required for a config that signs.",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--json", help="Also write the table as JSON here.")
    ] = None,
) -> None:
    """Per federation and round: the updates the run's participants published against what
    the aggregator folded, refused, dropped as duplicates and dead-lettered, and the foreign,
    incomplete and unreadable records beside them. Exit 0 only when every published update
    is matched to one fold or a named refusal; 1 with one line per problem otherwise."""
    from worldlm.security.keys import KeyFileError, load_public_keys
    from worldlm.record.recording import audit_run

    hierarchy = None
    if config is not None:
        from worldlm.cli.participants import load_config

        hierarchy = load_config(config, run)
        if hierarchy.run.signing == "required" and keys is None:
            typer.echo(
                f"worldlm: run {run!r} signs its updates: give its key directory (--keys DIR) "
                "so that only updates signed by its participants count as published",
                err=True,
            )
            raise typer.Exit(2)
    try:
        public = load_public_keys(keys) if keys is not None else None
    except KeyFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--keys") from None
    table = asyncio.run(audit_run(kafka, run, redis=redis, hierarchy=hierarchy, keys=public))
    if not table.rows and not table.unread:
        typer.echo(f"worldlm: no round ledger of run {run!r} on {kafka}", err=True)
        raise typer.Exit(2)
    typer.echo(table.render())
    if out is not None:
        found = asdict(table) | {"ok": table.ok, "problems": table.problems}
        out.write_text(json.dumps(found, indent=2) + "\n")
    if not table.ok:
        raise typer.Exit(1)
