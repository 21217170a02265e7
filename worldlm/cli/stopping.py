"""How a long command stops, and the status it exits with.

The first SIGINT/SIGTERM sets the command's :class:`Stop`, so it shuts down cleanly; a
second, or ``STOP_GRACE_S`` without an end, cancels it. The exit status says how it ended:

* 0: the work completed (for ``worldlm run``: the root's final round);
* 130 after SIGINT, 143 after SIGTERM (128 + the signal, as a shell reports a process the
  signal killed): interrupted, whether the stop was clean or forced;
* 1: a failure (a server gone for good, a worker that died, an exception).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import typer

T = TypeVar("T")

#: After SIGINT/SIGTERM, how long a clean stop may take before the run is cancelled.
STOP_GRACE_S = 10.0


class Stop(asyncio.Event):
    """Set at a command's first SIGINT/SIGTERM (:attr:`signal` says which).

    A command whose work is done and that goes on only until a signal (a dashboard kept
    serving after its run) calls :meth:`complete`: that signal is then its normal end.
    """

    def __init__(self) -> None:
        super().__init__()
        self.signal: signal.Signals | None = None
        self.completed = False

    def interrupt(self, sig: signal.Signals) -> None:
        """Stop because of ``sig`` (the first one counts); also what a parent's going away is."""
        if self.signal is None:
            self.signal = sig
        self.set()

    def complete(self) -> None:
        """The command's work is done: a signal from now on ends it with status 0."""
        self.completed = True

    @property
    def interrupted(self) -> bool:
        """A signal stopped the work before it was done."""
        return self.signal is not None and not self.completed

    @property
    def status(self) -> int:
        """The exit status of an interrupted command: 128 + the signal (130 without one)."""
        return 128 + (self.signal or signal.SIGINT)


def run_until_signal(main: Callable[[Stop], Awaitable[T]], stop: Stop | None = None) -> T:
    """Run ``main(stop)``; the first SIGINT/SIGTERM sets ``stop`` so it can shut down cleanly.

    Stopping always finishes: if ``main`` has not returned ``STOP_GRACE_S`` after the first
    signal, or at a second signal, it is cancelled, which unwinds every context it holds
    (embedded servers included, even mid start-up). Interrupted, cleanly or not, the process
    exits with ``stop.status`` (130 after SIGINT, 143 after SIGTERM) unless ``main`` called
    ``stop.complete()`` first; an exception ``main`` raises (``typer.Exit`` included) wins.
    Pass ``stop`` to read it afterwards, e.g. when ``main`` raises its own "stopped" error.
    """
    stop = stop if stop is not None else Stop()

    async def runner() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        received: list[signal.Signals] = []

        def cancel() -> None:
            if not task.done():
                typer.echo("stopping: cancelled", err=True)
                task.cancel()

        def on_signal(sig: signal.Signals) -> None:
            received.append(sig)
            stop.interrupt(sig)
            if len(received) == 1:
                typer.echo(f"stopping ({sig.name}); again to force", err=True)
                loop.call_later(STOP_GRACE_S, cancel)
            else:
                cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        return await main(stop)

    try:
        result = asyncio.run(runner())
    except asyncio.CancelledError:
        raise typer.Exit(stop.status) from None
    if stop.interrupted:
        raise typer.Exit(stop.status)
    return result


class ServerLost(Exception):
    """Redis or Kafka stayed unreachable past the retries: the run stopped."""


@contextlib.contextmanager
def server_errors(kafka: str, redis: str, round: Callable[[], int] | None = None) -> Iterator[None]:
    """A server gone for good is one clear line (the participants have already stopped and
    logged what they could), not an exception group's traceback; ``round``: the run's."""
    from aiokafka.errors import KafkaError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from brokers.liveness import BrokerLost

    redis_lost = (RedisConnectionError, RedisTimeoutError)
    try:
        yield
    except* (BrokerLost, *redis_lost, KafkaError, ConnectionError) as group:
        if (lost := group.subgroup(BrokerLost)) is not None:  # the broker watch's verdict
            first = _leaf(lost)
            assert isinstance(first, BrokerLost)
            line = first.describe(round() if round is not None else None)
            memory = "; the memory broker keeps no log: rerun, or use --durable"
            raise ServerLost(line + ("" if first.keeps_log else memory)) from None
        if (gone := group.subgroup(redis_lost)) is not None:
            raise ServerLost(f"Redis at {redis} is unreachable: {_leaf(gone)}") from None
        raise ServerLost(f"Kafka at {kafka} is unreachable: {_leaf(group)!r}") from None


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


class StudyCells(Protocol):
    """A study that runs its missing cells (``worldlm/lab/studies``): stoppable, reporting each."""

    should_stop: Callable[[], bool] | None
    on_done: Callable[[Any], None] | None

    def run(self) -> None: ...


def run_cells(study: StudyCells, total: int, out: Path) -> None:
    """Run ``study``'s cells with a progress bar over ``total`` until they are done or a
    signal stops them: then the finished cells stay in ``out/cells`` and the command exits
    130/143."""
    from tqdm import tqdm

    from worldlm.core.stopping import Stopped

    async def main(stop: Stop) -> None:
        with tqdm(desc="cells", unit="cell", total=total) as bar:
            study.should_stop = stop.is_set
            study.on_done = lambda cell: bar.update()
            await asyncio.to_thread(study.run)

    stop = Stop()
    try:
        run_until_signal(main, stop)
    except Stopped:
        typer.echo(f"stopped; finished cells are kept in {out / 'cells'}", err=True)
        raise typer.Exit(stop.status) from None
