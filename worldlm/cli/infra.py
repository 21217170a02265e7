"""``worldlm infra``: run the embedded servers, and check any Kafka + Redis end to end."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated

import typer

from worldlm import logs

app = typer.Typer(no_args_is_help=True)


@app.command()
def up(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    kafka_port: int = typer.Option(0, help="Kafka port (0: a free one)."),
    redis_port: int = typer.Option(0, help="Redis port (0: a free one)."),
    durable: Annotated[
        Path | None,
        typer.Option(
            "--durable",
            help="Keep the broker's log in files under this directory (a run's log left there "
            "by `worldlm run --durable DIR` is served again). Default: in memory.",
        ),
    ] = None,
) -> None:
    """Start the embedded Kafka-compatible broker and Redis; keep them up until Ctrl-C."""
    from brokers.embedded import EmbeddedKafka, EmbeddedRedis

    logs.configure()

    async def serve() -> None:
        async with (
            EmbeddedKafka(host, kafka_port or None, storage=durable) as kafka,
            EmbeddedRedis(host, redis_port or None) as redis,
        ):
            typer.echo(f"kafka bootstrap: {kafka.bootstrap}")
            if durable is not None:
                typer.echo(f"kafka log in:    {durable}")
            typer.echo(f"redis url:       {redis.url}")
            typer.echo("press Ctrl-C to stop", err=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


@app.command()
def smoke(
    kafka: str = typer.Option(None, help="Kafka bootstrap (default: start embedded servers)."),
    redis: str = typer.Option(None, help="Redis URL (default: start embedded servers)."),
    megabytes: float = typer.Option(16.0, help="Size of the delta to send."),
) -> None:
    """Send a model delta through Kafka and Redis and verify it bit-exact."""
    run_smoke(kafka, redis, megabytes)


def run_smoke(kafka: str | None, redis: str | None, megabytes: float) -> None:
    from brokers.embedded import embedded_servers
    from brokers.smoke import SmokeReport, smoke_transfer

    logs.configure(level="warning")

    async def go() -> SmokeReport:
        if kafka and redis:
            return await smoke_transfer(kafka, redis, megabytes=megabytes)
        if kafka or redis:
            raise typer.BadParameter("give both --kafka and --redis, or neither")
        async with embedded_servers() as servers:
            typer.echo(f"embedded kafka {servers.kafka}, redis {servers.redis}")
            return await smoke_transfer(servers.kafka, servers.redis, megabytes=megabytes)

    report = asyncio.run(go())
    typer.echo(
        f"run {report.run}: {report.megabytes:.1f} MB in {report.chunks} chunks, "
        f"{report.seconds:.2f}s ({report.mb_per_s:.0f} MB/s), bit-exact={report.bit_exact}, "
        f"barrier closed={report.barrier_closed}, residual round={report.residual_round}"
    )
    if not (report.bit_exact and report.barrier_closed and report.residual_round == 0):
        raise typer.Exit(1)
