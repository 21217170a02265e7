"""One reader per partition for a whole process: subscribers share it, each from its own offset.

A hundred clients of one federation in one process follow the same broadcast partition; each
with its own :class:`~brokers.kafka.PartitionReader` would be a hundred consumers, each with
its connections, buffers and a fetch every ``fetch_max_wait_ms``. A :class:`Fanout` reads the
partition once and hands every record (the same ``bytes``, not a copy) to each subscription
at or past the subscription's own next offset: a subscriber that starts before the reader's
position makes the reader seek back, and those already further on skip what they have seen.
Subscribers wake when records arrive, not on a timer. A reader that fails hands its error to
every subscription. Fan-outs are shared within one running loop, like :mod:`brokers.shared`,
and so is the decoding of what they carry: :meth:`Fanout.receiver` is the one
:class:`~brokers.deltas.SharedReceiver` of a sender's deltas on the partition, so a broadcast
is decoded and verified once per process, not once per follower.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable
from dataclasses import replace

import structlog
from aiokafka import ConsumerRecord, TopicPartition

from brokers.deltas import SharedReceiver
from brokers.kafka import KafkaSettings, PartitionReader

log = structlog.get_logger(__name__)

#: How long one fetch of the shared reader waits for records before it reports "caught up".
FETCH_MS = 100


class Subscription:
    """One subscriber's view of a shared partition: the records from its offset on."""

    def __init__(self, fanout: Fanout, offset: int) -> None:
        self.fanout = fanout
        self.next = offset  # the next offset this subscriber has not been given
        self._records: list[ConsumerRecord] = []
        self._caught_up = False
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self._wants_idle = False

    @property
    def tp(self) -> TopicPartition:
        return self.fanout.tp

    def _put(self, records: list[ConsumerRecord], *, jump: bool = False) -> None:
        """Take the records that continue this subscription; ``jump``: the reader accepted a
        hole, so the next record may lie past it."""
        fresh = []
        for r in records:
            if r.offset == self.next or (jump and r.offset > self.next):
                fresh.append(r)
                self.next = r.offset + 1
        # A record past ``next`` came from before a seek back (for a newer subscriber, or
        # for this one): the reader brings it again in order.
        if fresh:
            self._records.extend(fresh)
            self._caught_up = False
            self._changed.set()

    def _idle(self) -> None:
        """The reader found nothing more; wakes a waiter that asked for it."""
        self._caught_up = True
        if self._wants_idle:
            self._changed.set()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._changed.set()

    async def fetch(
        self, timeout_s: float | None = None, *, idle: bool = False
    ) -> list[ConsumerRecord]:
        """The records that came since the last call, in offset order. Waits for some, for
        ``timeout_s``, or (``idle``) for the reader to find nothing more; may return none."""
        if not self._records and self._error is None:
            self._changed.clear()
            self._wants_idle = idle
            try:
                async with asyncio.timeout(timeout_s):
                    await self._changed.wait()
            except TimeoutError:
                pass
            finally:
                self._wants_idle = False
        if self._error is not None:
            raise self._error
        records, self._records = self._records, []
        return records

    @property
    def caught_up(self) -> bool:
        """Nothing is waiting here, and the reader found nothing newer (its last fetch was
        empty, or this subscription reached the partition's end as that fetch saw it)."""
        end = self.fanout.highwater
        return not self._records and (self._caught_up or (end is not None and self.next >= end))

    async def close(self) -> None:
        await self.fanout.remove(self)


class Fanout:
    """The shared reader of one partition and its subscriptions."""

    def __init__(self, settings: KafkaSettings, tp: TopicPartition) -> None:
        self.settings = settings
        self.tp = tp
        self.subscriptions: set[Subscription] = set()
        self._reader: PartitionReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._position = 0  # where the reader reads next
        self.highwater: int | None = None  # the partition's end as the last fetch saw it
        self.fetches = 0  # fetches of the shared reader so far (tests wait on it)
        self._lock = asyncio.Lock()
        self._receivers: dict[bytes, SharedReceiver] = {}

    def receiver(self, key: bytes) -> SharedReceiver:
        """The process's one receiver of the deltas keyed ``key`` on this partition (while
        any subscription lasts: the last one to leave drops it, payloads and all)."""
        found = self._receivers.get(key)
        if found is None:
            found = self._receivers[key] = SharedReceiver()
        return found

    async def add(self, offset: int) -> Subscription:
        async with self._lock:
            subscription = Subscription(self, offset)
            if self._reader is None:
                self._reader = PartitionReader(self.settings, {self.tp: offset})
                await self._reader.start()
                self._position = offset
                self._task = asyncio.create_task(self._loop(), name=f"fanout-{self.tp.topic}")
                self._task.add_done_callback(self._done)
            elif offset < self._position:
                self._reader.seek(self.tp, offset)
                self._position = offset
            self.subscriptions.add(subscription)
            return subscription

    async def remove(self, subscription: Subscription) -> None:
        async with self._lock:
            self.subscriptions.discard(subscription)
            if self.subscriptions or self._reader is None:
                return
            self._receivers.clear()
            task, reader, self._task, self._reader = self._task, self._reader, None, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await reader.stop()

    async def _loop(self) -> None:
        reader = self._reader
        assert reader is not None
        try:
            while True:
                skipped = reader.gaps_skipped
                records = await reader.fetch(timeout_ms=FETCH_MS)
                self.fetches += 1
                if records:
                    self._position = records[-1].offset + 1
                    self.highwater = reader.highwater(self.tp)
                jump = reader.gaps_skipped > skipped
                for subscription in list(self.subscriptions):
                    if records:
                        subscription._put(records, jump=jump)
                    else:
                        subscription._idle()
        except Exception as exc:
            for subscription in list(self.subscriptions):
                subscription._fail(exc)
            raise

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("fanout_failed", topic=self.tp.topic, error=repr(task.exception()))


class Fanouts:
    """The process's fan-outs, one per (server, partition) and running loop."""

    def __init__(self) -> None:
        self._fanouts: dict[tuple[int, Hashable, TopicPartition], Fanout] = {}

    async def subscribe(
        self, settings: KafkaSettings, tp: TopicPartition, offset: int
    ) -> Subscription:
        """Records of ``tp`` from ``offset`` on, read by the process's one reader of it."""
        server = replace(settings, client_id="worldlm", partitions=0)
        key = (id(asyncio.get_running_loop()), server, tp)
        fanout = self._fanouts.get(key)
        if fanout is None:
            fanout = self._fanouts[key] = Fanout(server, tp)
        return await fanout.add(offset)

    def readers(self) -> int:
        """Shared readers open now, over every loop (tests and benchmarks count them)."""
        return sum(f._reader is not None for f in self._fanouts.values())


#: The process's shared partition readers.
fanouts = Fanouts()
