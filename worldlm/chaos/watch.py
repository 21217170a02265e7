"""Following a live run from the outside: its round events and metrics reports, as published.

A :class:`RunWatch` reads the run's events and metrics topics from their start (explicit
partition assignment, like every reader here) in a background task, and lets its user (a fault
campaign's scenario, a test) wait until something was published: a round opened or closed, a
federation's final report. It is what a dashboard sees; it never asks a participant anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import TopicPartition

from brokers.kafka import KafkaSettings, PartitionReader
from schemas.codec import event_decoder, metrics_decoder
from schemas.errors import WireError
from schemas.messages import MetricsReport, RoundEvent
from schemas.topics import Topics


@dataclass(frozen=True)
class RoundTimes:
    """When a federation's round first opened and first closed (sender clock), and why."""

    opened: float | None
    closed: float | None
    reason: str = ""

    @property
    def seconds(self) -> float | None:
        if self.opened is None or self.closed is None:
            return None
        return self.closed - self.opened


class RunWatch:
    """The events and metrics of one run, as they are published."""

    def __init__(self, kafka: str | KafkaSettings, run_id: str, partitions: int) -> None:
        topics = Topics(run_id)
        self.topics = topics
        settings = (
            kafka
            if isinstance(kafka, KafkaSettings)
            else KafkaSettings(bootstrap=kafka, client_id=f"worldlm-watch-{run_id}")
        )
        start = {
            TopicPartition(t, p): 0
            for t in (topics.events, topics.metrics)
            for p in range(partitions)
        }
        self._reader = PartitionReader(settings, start)
        self.reports: list[MetricsReport] = []
        self.events: list[RoundEvent] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunWatch:
        await self._reader.start()
        self._task = asyncio.create_task(self._loop(), name="chaos-watch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._reader.stop()

    async def _loop(self) -> None:
        while True:
            records = await self._reader.fetch(timeout_ms=100)
            for record in records:
                value = record.value or b""
                with contextlib.suppress(WireError):
                    if record.topic == self.topics.metrics:
                        self.reports.append(metrics_decoder.decode(value))
                    else:
                        event = event_decoder.decode(value)
                        if isinstance(event, RoundEvent):
                            self.events.append(event)
            if records:
                async with self._changed:
                    self._changed.notify_all()

    async def until(self, check: Callable[[], bool]) -> None:
        """Return once ``check()`` holds on what was seen (bound it with a timeout)."""
        async with self._changed:
            while not check():
                await self._changed.wait()

    async def wait_for(self, predicate: Callable[[MetricsReport], bool]) -> MetricsReport:
        """The first metrics report (seen so far or to come) that satisfies ``predicate``
        (bound it with a timeout)."""
        async with self._changed:
            while True:
                for report in self.reports:
                    if predicate(report):
                        return report
                await self._changed.wait()

    # -- what was seen ------------------------------------------------------------------

    def of(self, node: str) -> list[MetricsReport]:
        """Every metrics report of participant ``node``, in the order published."""
        return [r for r in self.reports if r.node == node]

    def round(self, federation: str, round_: int) -> RoundTimes:
        opened = closed = None
        reason = ""
        for e in self.events:
            if e.envelope.federation != federation or e.round != round_:
                continue
            if e.action == "opened" and opened is None:
                opened = e.envelope.timestamp
            elif e.action == "closed" and closed is None:
                closed, reason = e.envelope.timestamp, e.reason
        return RoundTimes(opened, closed, reason)

    def opened(self, federation: str, round_: int) -> bool:
        return self.round(federation, round_).opened is not None

    def closed(self, federation: str, round_: int) -> bool:
        return self.round(federation, round_).closed is not None

    def aggregator_reports(self, federation: str) -> list[MetricsReport]:
        return [r for r in self.reports if r.role == "aggregator" and r.node == federation]

    def reported(self, federation: str, round_: int) -> bool:
        return any(r.round == round_ for r in self.aggregator_reports(federation))

    async def settle(self, check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
        """Whether ``check()`` holds within ``timeout_s`` (for what may still be in flight
        when the participants have exited; False rather than a wait without end)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.until(check)
        except TimeoutError:
            return False
        return True
