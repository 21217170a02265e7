"""What the CLI's commands share: their common options, loading a config, and turning a
missing key, a bad Kafka security setting or a lost server into a usage error or one line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from worldlm.cli.stopping import ServerLost

if TYPE_CHECKING:
    from worldlm.config.hierarchy import Hierarchy

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
def usage_errors() -> Iterator[None]:
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


def single_threaded_torch() -> None:
    """One intra-op thread per process when many participants share it.

    The tiny models' ops are too small to gain from a thread pool, and several clients
    training in threads of one process oversubscribe the cores (measured: a quick hierarchy
    ran in 60 s single-threaded against 70 s with two threads per op).
    """
    import torch

    torch.set_num_threads(1)
