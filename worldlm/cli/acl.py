"""``worldlm acl``: the Kafka and Redis ACLs a deployment of a config needs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class Format(StrEnum):
    kafka = "kafka"
    redis = "redis"


def acl(
    config: Annotated[Path, typer.Argument(help="Hierarchy config (TOML).")],
    format: Annotated[
        Format, typer.Option("--format", help="kafka: kafka-acls.sh lines; redis: ACL SETUSER.")
    ] = Format.kafka,
    kafka: Annotated[
        str, typer.Option("--kafka", help="Kafka bootstrap the printed commands use.")
    ] = "localhost:9092",
    command_config: Annotated[
        str | None,
        typer.Option("--command-config", help="Admin client properties of a secured cluster."),
    ] = None,
    keys: Annotated[
        Path | None,
        typer.Option("--keys", help="Key directory with <id>.redis passwords (redis format)."),
    ] = None,
    redis_version: Annotated[
        int, typer.Option("--redis-version", help="Major version: 7+ has read-only patterns.")
    ] = 7,
    redis: Annotated[
        str | None, typer.Option("--redis", help="Redis URL of an admin, for --apply.")
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Set the Redis users on --redis instead of printing.")
    ] = False,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Override run.id.")] = None,
) -> None:
    """Print the ACLs of CONFIG's deployment: each participant principal (<run>.<id>) may
    write only its federation's (a client) or its own and its parent's (an aggregator)
    update topics and read only the matching broadcast topics and Redis keys; the observer
    (<run>.observer: dashboard, metrics) reads the run-wide topics and keys. Kafka: topic
    creation, then one kafka-acls.sh line per grant. Redis: one ACL SETUSER line per
    principal, with the SHA-256 of its password from --keys (else a placeholder).
    --apply sets the Redis users on --redis (an admin connection) instead of printing them."""
    from worldlm.security.acl import kafka_commands, principals, redis_commands
    from worldlm.cli.participants import _usage_errors, load_config
    from worldlm.security.credentials import read_password

    hierarchy = load_config(config, run_id)
    with _usage_errors(), _refusals():
        if apply:
            from worldlm.security.credentials import apply_redis_users

            if redis is None:
                raise typer.BadParameter("--apply sets users on a Redis: give --redis URL")
            count = asyncio.run(
                apply_redis_users(hierarchy, redis, str(keys) if keys is not None else None)
            )
            typer.echo(f"{count} Redis users set for run {hierarchy.run.id}")
            return
        if format is Format.kafka:
            lines = kafka_commands(hierarchy, kafka, command_config=command_config)
        else:
            passwords = (
                {p: read_password(keys, p) for p in principals(hierarchy)}
                if keys is not None
                else None
            )
            lines = redis_commands(hierarchy, passwords, read_only=redis_version >= 7)
    for line in lines:
        typer.echo(line)


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """A reserved name in the config, or a Redis that refuses the users: one message."""
    from brokers.access import AccessError

    try:
        yield
    except AccessError as exc:
        typer.echo(f"worldlm: {exc}", err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="CONFIG") from None
