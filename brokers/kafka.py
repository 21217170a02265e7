"""Kafka adapter on aiokafka: producer, explicit-partition readers, group consumers.

Topic administration is in :mod:`brokers.admin`, authentication and TLS settings in
:mod:`brokers.security`.

Plain Kafka only, so the same code runs on Apache Kafka and on the embedded Tansu broker:
no idempotent or transactional producer, no reliance on end offsets or ``seek_to_end``
(both wrong or missing on Tansu), a ``fetch_max_wait_ms`` short enough for Tansu (which does
not answer a waiting fetch the moment records arrive) and long enough that idle readers do not
spin, and offsets committed by hand, only after the caller has processed a record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.partitioner import murmur2
from aiokafka.structs import OffsetAndMetadata, RecordMetadata

from brokers.lifecycle import Once
from brokers.outage import fail_sends, stop_consumer
from brokers.security import KafkaSecurity
from brokers.shared import Shared

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach Kafka and how to size requests; few knobs, derived defaults."""

    bootstrap: str
    client_id: str = "worldlm"
    #: Largest record we produce (chunk + envelope); chunks default to 768 KiB.
    max_request_size: int = 1024 * 1024
    #: How long the broker may hold a fetch that finds nothing. Apache Kafka answers as soon
    #: as records arrive; Tansu looks again within the wait. Measured with
    #: benchmarks/fetch_wait.py (2026-12-02, 7 trials; docs/benchmarks.md): a record reaches a
    #: reader at the tail in 4.3 / 2.8 / 15.5 ms (median) at 10 / 50 / 100 ms, while 8 idle
    #: readers cost 0.37 / 0.13 / 0.08 of a core (this process and the broker together).
    fetch_max_wait_ms: int = 50
    max_partition_fetch_bytes: int = 8 * 1024 * 1024
    fetch_max_bytes: int = 64 * 1024 * 1024
    request_timeout_ms: int = 30_000
    partitions: int = 4
    security: KafkaSecurity = field(default_factory=KafkaSecurity.from_env)


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` (murmur2, positive)."""
    raw = key.encode() if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions


def _aiokafka_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        client_id=settings.client_id,
        acks="all",
        enable_idempotence=False,
        max_request_size=settings.max_request_size,
        request_timeout_ms=settings.request_timeout_ms,
        linger_ms=0,
        **settings.security.client_kwargs(),
    )


async def _open_producer(settings: Hashable) -> AIOKafkaProducer:
    assert isinstance(settings, KafkaSettings)
    producer = _aiokafka_producer(settings)
    await producer.start()
    return producer


#: The process's shared aiokafka producers, one per server and request size.
producers: Shared[AIOKafkaProducer] = Shared(_open_producer, lambda p: p.stop())


class Producer(Once):
    """A producer that sends to explicit partitions and waits for acknowledgements.

    ``shared``: the aiokafka producer (and its connections) is the process's one for these
    settings (:data:`producers`), so many participants in one process open one; the counters
    stay this object's own.
    """

    def __init__(self, settings: KafkaSettings, *, shared: bool = False) -> None:
        self.settings = settings
        self._key = replace(settings, client_id="worldlm", partitions=0) if shared else None
        self._own = None if shared else _aiokafka_producer(settings)
        self._producer = self._own
        self.records_sent = 0
        self.bytes_sent = 0

    async def _start(self) -> None:
        if self._own is not None:
            await self._own.start()
        else:
            self._producer = await producers.acquire(self._key)

    async def _stop(self) -> None:
        if self._own is not None:
            await self._own.stop()
        else:
            self._producer = None
            await producers.release(self._key)

    async def abandon(self, exc: Exception) -> None:
        """Fail every send still waiting (the broker is gone for good): a stop then needn't."""
        if self._producer is not None:
            await fail_sends(self._producer, exc)

    @property
    def _client(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("Producer is not started")
        return self._producer

    async def send(
        self, topic: str, value: bytes, *, key: str | None = None, partition: int | None = None
    ) -> RecordMetadata:
        """Send one record and wait until the broker has it."""
        return (await self.send_many(topic, [value], key=key, partition=partition))[0]

    async def send_many(
        self,
        topic: str,
        values: Iterable[bytes],
        *,
        key: str | None = None,
        partition: int | None = None,
    ) -> list[RecordMetadata]:
        """Send records in order to one partition, pipelined; wait for every acknowledgement.

        With ``partition`` unset and a ``key`` given, the partition is the key's default one,
        computed here so readers that assign partitions explicitly can find it.
        """
        raw_key = key.encode() if key is not None else None
        if partition is None and raw_key is not None:
            partition = partition_for(raw_key, await self.partitions(topic))
        futures = []
        for value in values:
            futures.append(await self._client.send(topic, value, key=raw_key, partition=partition))
            self.records_sent += 1
            self.bytes_sent += len(value)
        return list(await asyncio.gather(*futures))

    async def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has."""
        found = await self._client.partitions_for(topic)
        if not found:
            raise RuntimeError(f"topic {topic} has no partitions (was it created?)")
        return len(found)


def _consumer(settings: KafkaSettings, group_id: str | None, **extra: object) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        client_id=settings.client_id,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        fetch_max_bytes=settings.fetch_max_bytes,
        request_timeout_ms=settings.request_timeout_ms,
        **settings.security.client_kwargs(),
        **extra,
    )


#: How often a reader looks again for topics that did not exist yet.
TOPIC_CHECK_S = 0.5


class PartitionReader(Once):
    """Reads explicitly assigned partitions from explicit offsets; never joins a group.

    This is how clients follow broadcasts: no rebalance (seconds on Tansu), and a newcomer
    starts exactly at the offset Redis recorded for the current model.

    Offsets of a partition we produce to (no transactions, no compaction) are contiguous, so
    a jump means a record was not visible when its successors were: the reader then returns
    only the records before the hole and reads again from it, for up to ``gap_wait_s``,
    before it accepts the hole (a compacted topic, transaction markers) and goes on. Holes
    are counted in ``gaps`` (seen) and ``gaps_skipped`` (accepted after the wait).

    A reader never creates a topic: aiokafka asks for the metadata of assigned topics with
    ``allow_auto_topic_creation``, and a broker that auto-creates (Tansu; Apache Kafka by
    default) would make a missing one with its default partition count, not the run's. A
    partition is assigned once a metadata request for all topics (which creates none) shows
    its topic; until then it is ``waiting``, looked for every ``TOPIC_CHECK_S``.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        start: dict[TopicPartition, int],
        *,
        gap_wait_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.gap_wait_s = gap_wait_s
        self.gaps = 0
        self.gaps_skipped = 0
        self._next: dict[TopicPartition, int] = dict(start)
        self._holes: dict[TopicPartition, tuple[int, float]] = {}
        #: partitions not assigned yet because their topic does not exist
        self.waiting: set[TopicPartition] = set(start)
        self._looked = 0.0  # when the reader last looked for the waiting partitions' topics
        self.looks = 0  # how many times it looked (tests wait on it)
        self._consumer = _consumer(settings, None)

    async def _start(self) -> None:
        await self._consumer.start()
        await self._assign_existing()
        if self.waiting:
            log.info("reader_waiting_for_topics", topics=sorted({tp.topic for tp in self.waiting}))

    async def _stop(self) -> None:
        await stop_consumer(self._consumer)

    async def _assign_existing(self) -> None:
        """Assign the waiting partitions whose topic exists now, each from its next offset."""
        self._looked = time.monotonic()
        self.looks += 1
        existing = await self._consumer.topics()  # metadata of all topics: creates none
        found = {tp for tp in self.waiting if tp.topic in existing}
        if not found:
            return
        self.waiting -= found
        assigned = [tp for tp in self._next if tp not in self.waiting]
        self._consumer.assign(assigned)  # a new assignment: each goes on from its next offset
        for tp in assigned:
            self._consumer.seek(tp, self._next[tp])

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Continue ``tp`` from ``offset``."""
        if tp not in self.waiting:
            self._consumer.seek(tp, offset)
        self._next[tp] = offset
        self._holes.pop(tp, None)

    async def position(self, tp: TopicPartition) -> int:
        if tp in self.waiting:
            return self._next[tp]
        return await self._consumer.position(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's high watermark as of the last fetch (None before one)."""
        value = None if tp in self.waiting else self._consumer.highwater(tp)
        return int(value) if value is not None else None

    async def fetch(
        self, timeout_ms: int = 200, max_records: int | None = None
    ) -> list[ConsumerRecord]:
        """Records available within ``timeout_ms``, in partition order, without holes."""
        if self.waiting and time.monotonic() - self._looked >= TOPIC_CHECK_S:
            await self._assign_existing()
        if len(self.waiting) == len(self._next):  # nothing assigned: nothing to wait for here
            await asyncio.sleep(min(timeout_ms / 1000, TOPIC_CHECK_S))
            return []
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out: list[ConsumerRecord] = []
        for tp, records in batches.items():
            out.extend(self._contiguous(tp, records))
        return out

    def _contiguous(
        self, tp: TopicPartition, records: list[ConsumerRecord]
    ) -> list[ConsumerRecord]:
        expected = self._next.get(tp)
        for i, record in enumerate(records):
            if expected is not None and record.offset > expected:
                hole = self._holes.get(tp)
                now = time.monotonic()
                where = {"topic": tp.topic, "partition": tp.partition, "expected": expected}
                if hole is None or hole[0] != expected:
                    self.gaps += 1
                    self._holes[tp] = hole = (expected, now)
                    log.warning("offset_gap", got=record.offset, **where)
                if now - hole[1] < self.gap_wait_s:
                    self._consumer.seek(tp, expected)  # read the hole again
                    self._next[tp] = expected
                    return records[:i]
                self.gaps_skipped += 1
                self._holes.pop(tp, None)
                waited = round(now - hole[1], 3)
                log.warning("offset_gap_skipped", got=record.offset, waited_s=waited, **where)
            expected = record.offset + 1
        if expected is not None:
            self._next[tp] = expected
            hole = self._holes.get(tp)
            if hole is not None and hole[0] < expected:
                del self._holes[tp]  # filled
        return records

    async def records(self, timeout_ms: int = 200) -> AsyncIterator[ConsumerRecord]:
        """Every record from the start offsets on, until the caller stops iterating."""
        while True:
            for record in await self.fetch(timeout_ms):
                yield record


class GroupConsumer(Once):
    """A consumer-group member with manual commits, for roles that need failover.

    Commit with :meth:`commit` only after a record's effect is durable.
    """

    def __init__(self, settings: KafkaSettings, group_id: str, topics: Sequence[str]) -> None:
        self.settings = settings
        self.group_id = group_id
        self.topics = list(topics)
        self._consumer = _consumer(settings, group_id)

    async def _start(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe(self.topics)

    async def _stop(self) -> None:
        await stop_consumer(self._consumer)

    async def fetch(
        self, timeout_ms: int = 200, max_records: int | None = None
    ) -> list[ConsumerRecord]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return [record for records in batches.values() for record in records]

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` (the next offset to read, per partition)."""
        if offsets:
            await self._consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})

    async def committed(self, tp: TopicPartition) -> int | None:
        return await self._consumer.committed(tp)

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment())
