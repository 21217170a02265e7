"""Run a whole hierarchy in one process: every aggregator and client as an asyncio task.

The participants still speak only through Kafka and Redis; the runner only starts them and
collects what they publish on the metrics topic (the same stream dashboards read). Its parts
also run a share of a hierarchy (``make_participants``, ``run_participants``) and follow a run
spread over processes (``prepare_local_run``, ``collecting``; participants/workers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path

from aiokafka import TopicPartition

from brokers.kafka import PartitionReader
from brokers.liveness import BrokerLost
from schemas.codec import metrics_decoder
from schemas.errors import WireError
from schemas.messages import MetricsReport
from worldlm.security.acl import principals
from worldlm.config.hierarchy import Hierarchy
from worldlm.security.credentials import generate_passwords
from worldlm.participants.aggregator import AggregatorParticipant
from worldlm.participants.client import ClientParticipant
from worldlm.participants.node import Endpoints, Node, prepare_run
from worldlm.core.results import RunResult

__all__ = [
    "RunResult",
    "collecting",
    "make_participants",
    "prepare_local_run",
    "run_hierarchy",
    "run_participants",
]


class MetricsCollector:
    """Reads the run's metrics topic from the start; calls ``on_report`` for each report."""

    def __init__(
        self, node: Node, on_report: Callable[[MetricsReport], None] | None = None
    ) -> None:
        self.node = node
        self.reports: list[MetricsReport] = []
        self.on_report = on_report
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topic = self.node.topics.metrics
        partitions = await self.node.producer.partitions(topic)
        self._reader = PartitionReader(
            self.node.settings, {TopicPartition(topic, p): 0 for p in range(partitions)}
        )
        await self._reader.start()
        self._task = asyncio.create_task(self._loop(), name="metrics-collector")

    async def _loop(self) -> None:
        while True:
            for record in await self._reader.fetch(100):
                try:
                    report = metrics_decoder.decode(record.value or b"")
                except WireError:
                    continue
                self.reports.append(report)
                if self.on_report is not None:
                    self.on_report(report)

    async def stop(self, drain_s: float = 0.5) -> None:
        await asyncio.sleep(drain_s)  # let the last reports arrive
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._reader.stop()


Participant = AggregatorParticipant | ClientParticipant


async def prepare_local_run(hierarchy: Hierarchy, endpoints: Endpoints) -> None:
    """What the operator does once before a run's participants start on these servers: the
    topics, and in an isolated run the passwords (made here if missing) and Redis users."""
    if hierarchy.run.isolation == "acl" and endpoints.key_dir is not None:
        # The runner is the operator here: it makes the passwords it is about to set.
        generate_passwords(endpoints.key_dir, principals(hierarchy))
    await prepare_run(hierarchy, endpoints)


@contextlib.asynccontextmanager
async def collecting(
    hierarchy: Hierarchy,
    endpoints: Endpoints,
    on_report: Callable[[MetricsReport], None] | None = None,
) -> AsyncIterator[MetricsCollector]:
    """The run's metrics reports, from the start of its topic, for as long as this is open."""
    # The watcher keeps the runner's (admin) Redis connection: it sends no deltas.
    watcher = Node(
        hierarchy, endpoints, f"{hierarchy.run.id}-runner", "client", "", sends_deltas=False
    )
    await watcher.start()
    try:
        collector = MetricsCollector(watcher, on_report)
        await collector.start()
        try:
            yield collector
        finally:
            await collector.stop()
    finally:
        await watcher.stop()


def make_participants(
    hierarchy: Hierarchy,
    endpoints: Endpoints,
    *,
    aggregators: Iterable[str],
    clients: Iterable[str],
    checkpoint_dir: Path,
) -> list[Participant]:
    """The given aggregators and clients, built (not started): a missing key fails here."""
    return [
        *(
            AggregatorParticipant(hierarchy, endpoints, f, checkpoint_dir=checkpoint_dir)
            for f in aggregators
        ),
        *(ClientParticipant(hierarchy, endpoints, c) for c in clients),
    ]


async def run_participants(
    participants: Sequence[Participant], stop: asyncio.Event | None = None
) -> None:
    """Run ``participants`` as tasks of this process until they end; ``stop`` stops them all.

    A broker gone for good ends each of them (its :class:`BrokerLost`, raised once all ended).
    """

    async def relay_stop() -> None:
        if stop is not None:
            await stop.wait()
            for p in participants:
                p.stop.set()

    lost: list[BrokerLost] = []

    async def run(p: Participant) -> None:
        try:
            await p.run()
        except BrokerLost as exc:  # the others see it too: each stops on its own, cleanly
            lost.append(exc)
            for other in participants:  # (and is told to, wherever it waits)
                other.stop.set()

    relay = asyncio.create_task(relay_stop())
    try:
        async with asyncio.TaskGroup() as group:
            for p in participants:
                group.create_task(run(p), name=getattr(p, "id", None) or p.node.id)
    finally:
        relay.cancel()
    if lost:
        raise lost[0]


async def run_hierarchy(
    hierarchy: Hierarchy,
    endpoints: Endpoints,
    *,
    checkpoint_dir: Path | None = None,
    on_report: Callable[[MetricsReport], None] | None = None,
    stop: asyncio.Event | None = None,
) -> RunResult:
    """Run every participant of ``hierarchy`` until the root's final broadcast."""
    started = time.perf_counter()
    await prepare_local_run(hierarchy, endpoints)
    with contextlib.ExitStack() as stack:
        if checkpoint_dir is None:
            checkpoint_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="worldlm-ckpt-"))
            )
        async with collecting(hierarchy, endpoints, on_report) as collector:
            participants = make_participants(
                hierarchy,
                endpoints,
                aggregators=[f.id for f in hierarchy.walk()],
                clients=hierarchy.clients,
                checkpoint_dir=checkpoint_dir,
            )
            await run_participants(participants, stop)
    return RunResult(collector.reports, time.perf_counter() - started)
