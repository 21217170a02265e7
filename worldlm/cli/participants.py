"""``worldlm run``, ``worldlm client``, ``worldlm aggregator``: the hierarchy, or one participant.

``run`` starts every participant of a config in one process (on embedded servers, or on the
given ``--kafka``/``--redis``). ``client`` and ``aggregator`` run one participant as its own
process against given servers: what docker-compose runs, one service per participant.
SIGINT and SIGTERM stop a participant cleanly (it leaves its federation and says so); the
exit status is 0 only for a completed run, 130/143 for one a signal stopped, 1 for a failure
(worldlm/cli/stopping.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol

import typer

from worldlm import logs
from worldlm.cli.spread import ShareOpt, WorkerOpt, WorkersOpt
from worldlm.cli.stopping import ServerLost, Stop, run_until_signal, server_errors

if TYPE_CHECKING:
    from worldlm.config.hierarchy import Hierarchy
    from worldlm.participants.node import Endpoints

KafkaOpt = Annotated[str | None, typer.Option("--kafka", help="Kafka bootstrap address host:port.")]
RedisOpt = Annotated[str | None, typer.Option("--redis", help="Redis URL redis://host:port/db.")]
RunIdOpt = Annotated[str | None, typer.Option("--run-id", help="Override the config's run id.")]
CheckpointOpt = Annotated[
    Path, typer.Option("--checkpoint-dir", help="Where aggregators keep their checkpoints.")
]
LogOpt = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]
KeysOpt = Annotated[
    Path | None,
    typer.Option("--keys", help="Key directory, when the run signs deltas (worldlm keys)."),
]
DurableOpt = Annotated[
    Path | None,
    typer.Option(
        "--durable",
        help="Keep the embedded broker's log in files under this directory (it survives the "
        "broker; `worldlm infra up --durable DIR` serves it again). Default: in memory.",
    ),
]


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    """A missing key or a bad Kafka security setting is a usage error, not a traceback."""
    from brokers.security import KafkaSecurityError
    from worldlm.security.keys import KeyFileError

    try:
        yield
    except KeyFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--keys") from None
    except KafkaSecurityError as exc:
        raise typer.BadParameter(str(exc), param_hint="environment") from None
    except ServerLost as exc:
        typer.echo(f"worldlm: {exc}", err=True)
        raise typer.Exit(1) from None


def load_config(path: Path, run_id: str | None) -> Hierarchy:
    from msgspec.structs import replace

    from worldlm.config.hierarchy import ConfigError, load
    from worldlm.training.corpus import partitions

    try:
        hierarchy: Hierarchy = load(path, known_partitions={p.name for p in partitions()})
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="CONFIG") from None
    if run_id:
        from dataclasses import replace as dc_replace

        hierarchy = dc_replace(hierarchy, run=replace(hierarchy.run, id=run_id))
    return hierarchy


@contextlib.asynccontextmanager
async def servers(
    kafka: str | None, redis: str | None, durable: Path | None = None
) -> AsyncIterator[tuple[str, str]]:
    """The given servers, or embedded ones for the duration (the broker's log in files under
    ``durable`` when given)."""
    if kafka and redis:
        if durable is not None:
            raise typer.BadParameter(
                "is for the embedded broker, not with --kafka", param_hint="--durable"
            )
        yield kafka, redis
        return
    if kafka or redis:
        raise typer.BadParameter("give both --kafka and --redis, or neither")
    from brokers.embedded import embedded_servers

    async with embedded_servers(storage=durable) as endpoints:
        where = f" (log in {durable})" if durable is not None else ""
        typer.echo(f"embedded kafka {endpoints.kafka}{where}, redis {endpoints.redis}", err=True)
        yield endpoints.kafka, endpoints.redis


def single_threaded_torch() -> None:
    """One intra-op thread per process when many participants share it.

    The tiny models' ops are too small to gain from a thread pool, and several clients
    training in threads of one process oversubscribe the cores (measured: a quick hierarchy
    ran in 60 s single-threaded against 70 s with two threads per op).
    """
    import torch

    torch.set_num_threads(1)


def run(
    config: Annotated[Path, typer.Argument(help="Hierarchy config (TOML).")],
    kafka: KafkaOpt = None,
    redis: RedisOpt = None,
    run_id: RunIdOpt = None,
    checkpoint_dir: Annotated[
        Path | None, typer.Option("--checkpoint-dir", help="Keep checkpoints here.")
    ] = None,
    log_level: LogOpt = "warning",
    dashboard: Annotated[
        bool, typer.Option("--dashboard", help="Serve the live dashboard alongside the run.")
    ] = False,
    dashboard_port: Annotated[
        int, typer.Option("--dashboard-port", help="The dashboard's HTTP port.")
    ] = 8050,
    keys: KeysOpt = None,
    durable: DurableOpt = None,
    workers: WorkersOpt = 1,
    share: ShareOpt = None,
    worker: WorkerOpt = False,
) -> None:
    """Run a whole hierarchy until the root's last round: in one process, over --workers N
    local processes, or one --share I/N of it.

    With --dashboard the dashboard follows the run on the same servers and keeps serving
    after it ends, until Ctrl-C.
    """
    from worldlm.cli import spread
    from worldlm.participants.node import Endpoints
    from worldlm.lab.progress import RoundProgress
    from worldlm.participants.runner import RunResult, run_hierarchy
    from worldlm.participants.workers import SpreadResult

    if share is not None or worker:
        if share is None or workers != 1 or dashboard or durable is not None:
            raise typer.BadParameter(
                "runs one share: not with --workers, --dashboard or --durable", param_hint="--share"
            )
        spread.run_share(
            config,
            share,
            kafka=kafka,
            redis=redis,
            run_id=run_id,
            checkpoint_dir=checkpoint_dir,
            log_level=log_level,
            keys=keys,
            worker=worker,
        )
        return
    workers = workers or spread.cores()
    logs.configure(level=log_level)
    single_threaded_torch()
    hierarchy = load_config(config, run_id)

    async def main(stop: Stop) -> None:
        async with (
            servers(kafka, redis, durable) as (k, r),
            contextlib.AsyncExitStack() as stack,
        ):
            board = None
            if dashboard:
                from worldlm.dashboard import Dashboard

                board = await stack.enter_async_context(
                    Dashboard(
                        kafka=k,
                        redis=r,
                        run_id=hierarchy.run.id,
                        hierarchy=hierarchy,
                        port=dashboard_port,
                    )
                )
                typer.echo(f"dashboard: {board.url}", err=True)
            endpoints = Endpoints(k, r, str(keys) if keys else None)
            root = hierarchy.root.id
            with (
                RoundProgress(hierarchy) as progress,
                server_errors(k, r, lambda: progress.rounds.get(root, 0)),
            ):
                result: RunResult
                if workers > 1:
                    result = await spread.spread(
                        hierarchy,
                        config,
                        endpoints,
                        workers=workers,
                        run_id=run_id,
                        checkpoint_dir=checkpoint_dir,
                        log_level=log_level,
                        keys=keys,
                        on_report=progress.update,
                        stop=stop,
                    )
                else:
                    result = await run_hierarchy(
                        hierarchy,
                        endpoints,
                        checkpoint_dir=checkpoint_dir,
                        on_report=progress.update,
                        stop=stop,
                    )
            finals = result.final_ppl()
            for client, ppl in sorted(finals.items()):
                typer.echo(f"{client:>16}  final validation perplexity {ppl:9.2f}")
            if isinstance(result, SpreadResult):
                typer.echo(spread.summary(result, stopped=stop.is_set()))
                if result.failures:
                    raise typer.Exit(1)
            else:
                typer.echo(
                    f"{'stopped after' if stop.is_set() else 'done in'} {result.wall_s:.1f}s"
                )
            if not stop.is_set():  # the root's final round: a signal from now on is no failure
                stop.complete()
            if board is not None and not stop.is_set():
                typer.echo(f"dashboard still at {board.url}; Ctrl-C to stop", err=True)
                await stop.wait()

    with _usage_errors():
        run_until_signal(main)


class _Participant(Protocol):
    stop: asyncio.Event

    async def run(self) -> None: ...


def _serve_one(
    config: Path,
    run_id: str | None,
    kafka: str,
    redis: str,
    log_level: str,
    keys: Path | None,
    make: Callable[[Hierarchy, Endpoints], _Participant],
) -> None:
    """Load the config, create the run's topics, run one participant until done or a signal."""
    from worldlm.participants.node import Endpoints, prepare_run

    logs.configure(level=log_level)
    hierarchy = load_config(config, run_id)
    endpoints = Endpoints(kafka, redis, str(keys) if keys else None)

    async def main(stop: Stop) -> None:
        participant = make(hierarchy, endpoints)  # a missing key fails here, before any I/O
        if hierarchy.run.isolation != "acl":  # else topics and users are the operator's
            await prepare_run(hierarchy, endpoints)
        participant.stop = stop
        await participant.run()
        if not stop.is_set():  # it ran to the end
            stop.complete()

    with _usage_errors(), server_errors(kafka, redis):
        run_until_signal(main)


def client(
    config: Annotated[Path, typer.Option("--config", help="Hierarchy config (TOML).")],
    node: Annotated[str, typer.Option("--node", help="This client's id in the config.")],
    kafka: Annotated[str, typer.Option("--kafka", help="Kafka bootstrap address host:port.")],
    redis: Annotated[str, typer.Option("--redis", help="Redis URL redis://host:port/db.")],
    run_id: RunIdOpt = None,
    log_level: LogOpt = "info",
    keys: KeysOpt = None,
) -> None:
    """Run one client against the given Kafka and Redis until the run ends or a signal."""
    from worldlm.participants.client import ClientParticipant

    _serve_one(
        config,
        run_id,
        kafka,
        redis,
        log_level,
        keys,
        lambda h, e: ClientParticipant(h, e, node),
    )


def aggregator(
    config: Annotated[Path, typer.Option("--config", help="Hierarchy config (TOML).")],
    node: Annotated[str, typer.Option("--node", help="This federation's id in the config.")],
    kafka: Annotated[str, typer.Option("--kafka", help="Kafka bootstrap address host:port.")],
    redis: Annotated[str, typer.Option("--redis", help="Redis URL redis://host:port/db.")],
    checkpoint_dir: CheckpointOpt = Path("checkpoints"),
    run_id: RunIdOpt = None,
    log_level: LogOpt = "info",
    keys: KeysOpt = None,
) -> None:
    """Run one federation's aggregator; it resumes from its checkpoint if one exists."""
    from worldlm.participants.aggregator import AggregatorParticipant

    _serve_one(
        config,
        run_id,
        kafka,
        redis,
        log_level,
        keys,
        lambda h, e: AggregatorParticipant(h, e, node, checkpoint_dir=checkpoint_dir),
    )
