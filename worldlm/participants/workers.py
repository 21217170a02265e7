"""The process shell of ``worldlm run --workers N``: one child process per share of a hierarchy.

The parent prepares the run once (topics; in an isolated run, Redis users), follows its
metrics, and starts one ``worldlm run CONFIG --share i/N --worker`` per share
(participants/shares.py), all on the same Kafka and Redis. A child builds its participants,
writes ``ready`` on its stdout and waits for ``go`` on its stdin, so that every share joins at
the same moment, as in one process (a ``sync`` round's quorum counts the members live when
updates arrive: a share still importing torch would miss the first rounds). The pipe also
carries the end: a child stops cleanly when its stdin closes, so no child outlives its
parent, even a parent killed with SIGKILL.

Stopping: at its first SIGINT/SIGTERM the parent sends SIGTERM to every child (a clean stop:
participants leave their federations; the child exits 143, no failure); a child still running
``TERM_GRACE_S`` later is killed. A child that fails (a non-zero status, a signal, an exit
before ``ready``) is announced with its participants and the others are stopped: without its
share the run's federations would only wait on deadlines. The parent's own status
(worldlm/cli/stopping.py): 1 when a child failed, else 130/143 when a signal stopped it, else 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.messages import MetricsReport
from worldlm.config.hierarchy import Hierarchy
from worldlm.participants.node import Endpoints
from worldlm.participants.runner import RunResult, collecting, prepare_local_run
from worldlm.participants.shares import Assignment, Share, partition

READY = b"ready\n"
GO = b"go\n"
#: A child's clean stop may take the CLI's STOP_GRACE_S (10 s) before it cancels itself;
#: the parent kills what is left after this.
TERM_GRACE_S = 15.0
#: When the parent itself is cancelled (a second signal, or its own grace ran out): how long
#: its children get after a second SIGTERM (which forces their stop) before SIGKILL.
KILL_AFTER_S = 5.0

#: The status of a child a signal stopped cleanly (worldlm/cli/stopping.py): 128 + signal.
INTERRUPTED = {s: 128 + s for s in (signal.SIGINT, signal.SIGTERM)}

Announce = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class WorkerExit:
    """How one child ended."""

    assignment: Assignment
    pid: int
    returncode: int
    ready: bool

    def describe(self) -> str:
        who = f"worker {self.assignment.share} (pid {self.pid}; {self.assignment.describe()})"
        if self.returncode < 0:
            return f"{who} was killed by {signal.Signals(-self.returncode).name}"
        if self.returncode in INTERRUPTED.values():  # a signal not from its parent stopped it
            sig = signal.Signals(self.returncode - 128).name
            return f"{who} was stopped by {sig} (status {self.returncode})"
        if self.returncode != 0:
            return f"{who} exited with status {self.returncode}"
        return f"{who} exited" + ("" if self.ready else " before it was ready")


class Worker:
    """One child process running one share; its stdout is read for ``ready``, other lines
    are passed on with the share as prefix. Its stderr is the parent's."""

    def __init__(
        self, assignment: Assignment, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> None:
        self.assignment = assignment
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.ready = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, announce: Announce) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
            limit=1 << 20,
            # Its own session: a terminal's Ctrl-C reaches the parent only, which forwards it
            # once (a child that got it twice would force its stop).
            start_new_session=True,
        )
        self._reader = asyncio.create_task(
            self._read(announce), name=f"worker-{self.assignment.share}"
        )

    async def _read(self, announce: Announce) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            if line == READY:
                self.ready.set()
            else:
                announce(f"[{self.assignment.share}] {line.decode(errors='replace').rstrip()}")

    async def go(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        with contextlib.suppress(ConnectionError):
            self._proc.stdin.write(GO)
            await self._proc.stdin.drain()

    def close_stdin(self) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            self._proc.stdin.close()

    def signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self.running:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def wait(self) -> WorkerExit:
        """Until the child has exited (and its stdout is read to the end)."""
        assert self._proc is not None and self._reader is not None
        returncode = await self._proc.wait()
        try:  # a grandchild holding the pipe open must not hold the parent
            await asyncio.wait_for(asyncio.shield(self._reader), timeout=1.0)
        except TimeoutError:
            self._reader.cancel()
        return WorkerExit(self.assignment, self.pid, returncode, self.ready.is_set())


class WorkerPool:
    """Children started together, released together, stopped together."""

    def __init__(self, workers: Sequence[Worker], announce: Announce = _stderr) -> None:
        self.workers = list(workers)
        self.announce = announce
        self.exits: list[WorkerExit] = []
        self.failures: list[WorkerExit] = []

    async def __aenter__(self) -> WorkerPool:
        try:
            for w in self.workers:
                await w.start(self.announce)
                self.announce(
                    f"worker {w.assignment.share} (pid {w.pid}): {w.assignment.describe()}"
                )
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self, stop: asyncio.Event) -> list[WorkerExit]:
        """Release every child once all are ready; wait for all of them to exit.

        ``stop`` (the parent's signal) or a child's failure stops the rest.
        """
        loop = asyncio.get_running_loop()
        exits = {asyncio.ensure_future(w.wait()): w for w in self.workers}
        stopping = asyncio.ensure_future(stop.wait())
        all_ready = asyncio.ensure_future(asyncio.gather(*(w.ready.wait() for w in self.workers)))
        waiting: set[asyncio.Future[Any]] = {*exits, stopping, all_ready}
        kill_at: float | None = None
        try:
            while waiting & exits.keys():
                timeout = None if kill_at is None else max(0.0, kill_at - loop.time())
                done, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:  # past the grace: what still runs is killed
                    for w in self.workers:
                        w.signal(signal.SIGKILL)
                    kill_at = loop.time() + KILL_AFTER_S
                    continue
                waiting -= done
                if all_ready in done and kill_at is None:
                    for w in self.workers:
                        await w.go()
                for future in done & exits.keys():
                    ended: WorkerExit = future.result()
                    self.exits.append(ended)
                    if _failed(ended, stopping=kill_at is not None):
                        self.failures.append(ended)
                        if kill_at is None:
                            self.announce(f"{ended.describe()}; stopping the other workers")
                            kill_at = self._terminate(loop.time())
                if stopping in done and kill_at is None:
                    kill_at = self._terminate(loop.time())
        finally:
            for future in waiting:  # all done, unless this was cancelled
                future.cancel()
        return sorted(self.exits, key=lambda e: e.assignment.share)

    def _terminate(self, now: float) -> float:
        for w in self.workers:
            w.signal(signal.SIGTERM)
        return now + TERM_GRACE_S

    async def stop(self) -> None:
        """Idempotent: SIGTERM (and EOF) to what still runs, SIGKILL after ``KILL_AFTER_S``."""
        running = [w for w in self.workers if w.running]
        try:
            for w in running:
                w.signal(signal.SIGTERM)
                w.close_stdin()
            if running:
                async with asyncio.timeout(KILL_AFTER_S):
                    await asyncio.gather(*(w.wait() for w in running))
        except TimeoutError:
            pass
        finally:
            for w in running:
                w.signal(signal.SIGKILL)
            for w in self.workers:
                w.close_stdin()


def _failed(ended: WorkerExit, *, stopping: bool) -> bool:
    """Once asked to stop, a child may end before it was released, by the SIGTERM itself
    (still importing, before its handler), or interrupted by it (143): none is a failure."""
    if stopping:
        return ended.returncode not in (0, -signal.SIGTERM, INTERRUPTED[signal.SIGTERM])
    return ended.returncode != 0 or not ended.ready


@dataclass
class SpreadResult(RunResult):
    """A run over several processes: its metrics reports, and how every child ended."""

    exits: list[WorkerExit] = field(default_factory=list)
    failures: list[WorkerExit] = field(default_factory=list)


async def spread_hierarchy(
    hierarchy: Hierarchy,
    endpoints: Endpoints,
    *,
    workers: int,
    command: Callable[[Share, Path], Sequence[str]],
    checkpoint_dir: Path | None = None,
    on_report: Callable[[MetricsReport], None] | None = None,
    stop: asyncio.Event | None = None,
    announce: Announce = _stderr,
    env: Mapping[str, str] | None = None,
) -> SpreadResult:
    """Run ``hierarchy`` over ``workers`` child processes until the root's final broadcast.

    ``command(share, checkpoint_dir)`` is the child's command line (``worldlm run --share
    --worker``). More workers than participants are not started.
    """
    started = time.perf_counter()
    stop = stop if stop is not None else asyncio.Event()
    await prepare_local_run(hierarchy, endpoints)
    count = max(1, min(workers, len(hierarchy.federations) + len(hierarchy.clients)))
    with contextlib.ExitStack() as stack:
        if checkpoint_dir is None:
            checkpoint_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="worldlm-ckpt-"))
            )
        pool = WorkerPool(
            [Worker(a, command(a.share, checkpoint_dir), env) for a in partition(hierarchy, count)],
            announce,
        )
        async with collecting(hierarchy, endpoints, on_report) as collector, pool:
            exits = await collector.node.broker.guard(pool.run(stop))  # stops them if gone
    return SpreadResult(
        collector.reports, time.perf_counter() - started, exits=exits, failures=pool.failures
    )


class ParentLink:
    """A child's end of the pipe to its parent: ``ready`` on stdout; ``go``, then EOF (stop)
    on stdin."""

    def __init__(self) -> None:
        self._reader = asyncio.StreamReader()
        self._transport: asyncio.ReadTransport | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self._reader), sys.stdin
        )

    def ready(self) -> None:
        sys.stdout.buffer.write(READY)
        sys.stdout.flush()

    async def released(self) -> bool:
        """True at ``go``; False if the parent closed the pipe (or died) first."""
        return await self._reader.readline() == GO

    async def closed(self) -> None:
        """Until the parent closes the pipe or dies."""
        while await self._reader.readline():
            pass

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
