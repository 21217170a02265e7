"""``worldlm run --workers N`` and ``worldlm run --share i/N``: one config over processes or hosts.

``--workers N`` (the parent) starts the embedded servers once, or uses ``--kafka``/``--redis``,
prepares the run, and runs share i/N of the participants in its i-th child process
(participants/workers.py). ``--share i/N`` runs one share in this process against given
servers: N hosts or containers, each with its own i and the same config, run the whole
hierarchy, every participant exactly once (participants/shares.py); they need nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from worldlm import logs

if TYPE_CHECKING:
    from schemas.messages import MetricsReport
    from worldlm.config.hierarchy import Hierarchy
    from worldlm.participants.node import Endpoints
    from worldlm.participants.shares import Share
    from worldlm.participants.workers import SpreadResult

WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        min=0,
        help="Spread the participants over N local processes on the same servers "
        "(0: one per CPU core; 1: all in this process).",
    ),
]
ShareOpt = Annotated[
    str | None,
    typer.Option(
        "--share",
        help="Run only share I/N of the participants, against --kafka and --redis: N hosts "
        "or containers, each with its own I, run the whole config.",
    ),
]
#: A child of ``--workers``: released by its parent's ``go``, stopped when its stdin closes.
WorkerOpt = Annotated[bool, typer.Option("--worker", hidden=True)]


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_share(text: str) -> Share:
    from worldlm.participants.shares import Share

    try:
        return Share.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--share") from None


def child_command(
    config: Path,
    share: Share,
    checkpoint_dir: Path,
    *,
    kafka: str,
    redis: str,
    run_id: str | None,
    log_level: str,
    keys: Path | None,
) -> list[str]:
    """The command line of the child that runs ``share`` for ``worldlm run --workers``."""
    argv = [sys.executable, "-m", "worldlm", "run", str(config.resolve())]
    argv += ["--share", str(share), "--worker", "--kafka", kafka, "--redis", redis]
    argv += ["--checkpoint-dir", str(checkpoint_dir.resolve()), "--log-level", log_level]
    if run_id:
        argv += ["--run-id", run_id]
    if keys is not None:
        argv += ["--keys", str(keys.resolve())]
    return argv


async def spread(
    hierarchy: Hierarchy,
    config: Path,
    endpoints: Endpoints,
    *,
    workers: int,
    run_id: str | None,
    checkpoint_dir: Path | None,
    log_level: str,
    keys: Path | None,
    on_report: Callable[[MetricsReport], None] | None,
    stop: asyncio.Event,
) -> SpreadResult:
    """The parent of ``worldlm run --workers N``: the children, until the run ends."""
    from worldlm.participants.workers import spread_hierarchy

    return await spread_hierarchy(
        hierarchy,
        endpoints,
        workers=workers,
        command=lambda share, ckpt: child_command(
            config,
            share,
            ckpt,
            kafka=endpoints.kafka,
            redis=endpoints.redis,
            run_id=run_id,
            log_level=log_level,
            keys=keys,
        ),
        checkpoint_dir=checkpoint_dir,
        on_report=on_report,
        stop=stop,
        announce=lambda line: typer.echo(line, err=True),
    )


def summary(result: SpreadResult, *, stopped: bool = False) -> str:
    """The parent's last line: how long, on how many workers, and which of them failed
    (``stopped``: a signal ended the run before it was done)."""
    count = len(result.exits)
    if result.failures:
        why = "; ".join(e.describe() for e in result.failures)
        return f"failed after {result.wall_s:.1f}s on {count} workers: {why}"
    return f"{'stopped after' if stopped else 'done in'} {result.wall_s:.1f}s on {count} workers"


def run_share(
    config: Path,
    share_text: str,
    *,
    kafka: str | None,
    redis: str | None,
    run_id: str | None,
    checkpoint_dir: Path | None,
    log_level: str,
    keys: Path | None,
    worker: bool,
) -> None:
    """``worldlm run CONFIG --share i/N``: this share's participants, until they end."""
    from worldlm.cli.participants import _usage_errors, load_config, single_threaded_torch
    from worldlm.cli.stopping import Stop, run_until_signal, server_errors
    from worldlm.participants.node import Endpoints, prepare_run
    from worldlm.participants.runner import make_participants, run_participants
    from worldlm.participants.shares import assignment
    from worldlm.participants.workers import ParentLink

    share = parse_share(share_text)
    if not (kafka and redis):
        raise typer.BadParameter(
            "a share runs against given servers: give --kafka and --redis", param_hint="--share"
        )
    logs.configure(level=log_level)
    single_threaded_torch()
    hierarchy = load_config(config, run_id)
    mine = assignment(hierarchy, share)
    endpoints = Endpoints(kafka, redis, str(keys) if keys else None)

    async def main(stop: Stop) -> None:
        started = time.perf_counter()
        participants = make_participants(  # a missing key fails here, before any I/O
            hierarchy,
            endpoints,
            aggregators=mine.aggregators,
            clients=mine.clients,
            checkpoint_dir=checkpoint_dir or Path("checkpoints"),
        )
        link = ParentLink() if worker else None
        watch: asyncio.Task[None] | None = None
        try:
            if link is not None:  # the parent prepared the run; start when it says so
                await link.open()
                link.ready()
                # The parent's going away (its pipe closed) stops a share as its SIGTERM does.
                if not await _first(link.released(), stop):
                    stop.interrupt(signal.SIGTERM)
                    return

                def parent_gone(w: asyncio.Task[None]) -> None:
                    if not w.cancelled():  # cancelled: our own end, below
                        stop.interrupt(signal.SIGTERM)

                watch = asyncio.create_task(link.closed(), name="parent-link")
                watch.add_done_callback(parent_gone)
            elif hierarchy.run.isolation != "acl":  # else topics and users are the operator's
                await prepare_run(hierarchy, endpoints)
            with server_errors(kafka, redis):
                await run_participants(participants, stop)
        finally:
            if watch is not None:
                watch.cancel()
            if link is not None:
                link.close()
        elapsed = time.perf_counter() - started
        ended = "stopped after" if stop.is_set() else "done in"
        typer.echo(f"share {share} ({mine.describe()}): {ended} {elapsed:.1f}s", err=True)
        if not stop.is_set():
            stop.complete()

    with _usage_errors():
        run_until_signal(main)


async def _first(released: Awaitable[bool], stop: asyncio.Event) -> bool:
    """True when ``released`` comes true before ``stop`` is set."""
    go = asyncio.ensure_future(released)
    stopped = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({go, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for future in (go, stopped):
        future.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await future
    return go in done and bool(go.result())
