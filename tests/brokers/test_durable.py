"""The embedded broker on durable storage (real Tansu on ``s3://``, real object store): its log
survives a SIGKILL of the broker and a restart on the same storage and port, and a later
broker on the same directory serves it again, offsets, topic settings and all. A durable
broker that dies on its own is restarted by its supervisor; one in memory is not."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from brokers.admin import ensure_topics
from brokers.embedded import EmbeddedKafka
from brokers.kafka import KafkaSettings, PartitionReader, Producer
from tests.waiting import until

TOPIC = "durable.log"
BIG = 700 * 1024  # a chunk-sized record


def value(i: int) -> bytes:
    return (f"record-{i}:".encode() * (BIG // 16))[: BIG if i % 3 == 0 else 64]


async def produce(settings: KafkaSettings, numbers: range) -> list[tuple[int, int]]:
    """Send records ``numbers`` (to partition i % 2); their (partition, offset)."""
    async with Producer(settings) as producer:
        return [
            (md.partition, md.offset)
            for i in numbers
            for md in [await producer.send(TOPIC, value(i), partition=i % 2)]
        ]


async def read_all(settings: KafkaSettings, count: int) -> dict[tuple[int, int], bytes]:
    """(partition, offset) -> value of the first ``count`` records of both partitions."""
    start = {TopicPartition(TOPIC, p): 0 for p in (0, 1)}
    found: dict[tuple[int, int], bytes] = {}
    async with PartitionReader(settings, start) as reader, asyncio.timeout(60):
        while len(found) < count:
            for record in await reader.fetch(timeout_ms=200):
                found[(record.partition, record.offset)] = record.value or b""
    return found


async def retention_of(settings: KafkaSettings) -> str | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, TOPIC)]
        )
        entries = response.resources[0][4]
        return next((str(e[1]) for e in entries if e[0] == "retention.ms"), None)
    finally:
        await admin.close()


async def test_records_survive_a_broker_kill_and_a_new_broker_on_the_same_directory(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "log"
    kafka = EmbeddedKafka(storage=storage)
    try:
        await kafka.start()
        settings = KafkaSettings(kafka.bootstrap, partitions=2)
        await ensure_topics(settings, [TOPIC], retention_ms=3_600_000)
        before = await produce(settings, range(10))
        port = kafka.port

        await kafka.kill()  # SIGKILL: no flush, no goodbye
        assert not kafka.running
        await kafka.start()  # same storage, same port
        assert kafka.port == port

        seen = await read_all(settings, 10)
        assert {pos: seen[pos] for pos in before} == {pos: value(i) for i, pos in enumerate(before)}
        after = await produce(settings, range(10, 14))  # the log goes on where it stopped
        assert sorted(after) == [(0, 5), (0, 6), (1, 5), (1, 6)]
    finally:
        await kafka.stop()

    async with EmbeddedKafka(storage=storage) as again:  # new ports, same files
        settings = KafkaSettings(again.bootstrap, partitions=2)
        seen = await read_all(settings, 14)
        assert seen == {pos: value(i) for i, pos in enumerate(before + after)}
        assert await retention_of(settings) == "3600000"


async def test_a_durable_broker_that_dies_on_its_own_is_restarted_on_its_storage(
    tmp_path: Path,
) -> None:
    async with EmbeddedKafka(storage=tmp_path / "log") as kafka:
        settings = KafkaSettings(kafka.bootstrap, partitions=2)
        await ensure_topics(settings, [TOPIC])
        before = await produce(settings, range(6))
        first = kafka.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)  # a crash nobody asked for
        await until(lambda: kafka.restarted == 1 and kafka.running, what="the supervisor's restart")
        assert kafka.pid != first
        seen = await read_all(settings, 6)
        assert seen == {pos: value(i) for i, pos in enumerate(before)}
    assert not kafka.running  # stopped on exit, not restarted


async def test_a_broker_in_memory_that_dies_stays_dead() -> None:
    """Restarted, it would come back empty: a run must fail rather than go on without its log."""
    async with EmbeddedKafka() as kafka:
        pid = kafka.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(lambda: not kafka.running, what="the broker's death noticed")
        # No budget, so no supervisor: nothing can start it again later either.
        assert kafka.restarts_left == 0 and kafka.restarted == 0
